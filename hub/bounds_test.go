package hub

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

func (f *fixture) publishPadded(t *testing.T, topology string, n, pad int) {
	t.Helper()
	body := fmt.Sprintf(`{"payload":{"n":%d,"pad":%q}}`, n, strings.Repeat("x", pad))
	if err := f.h.HandleMessage("topology."+topology+".status", []byte(body)); err != nil {
		t.Fatal(err)
	}
}

func TestUnwatchedTopologiesKeepNothing(t *testing.T) {
	f := newFixture(t, nil)
	for i := range 1000 {
		f.publishPadded(t, fmt.Sprintf("ghost-%d", i), i, 2000)
	}
	st := f.h.Stats()
	if n, b := st.Topologies.Load(), st.HistoryBytes.Load(); n != 0 || b != 0 {
		t.Fatalf("after 1000 events of unwatched topologies the hub keeps %d topologies, %d history bytes; want none", n, b)
	}
	if got := st.Unwatched.Load(); got != 1000 {
		t.Fatalf("Unwatched = %d, want 1000", got)
	}

	// A subscriber arriving later starts from a snapshot, and its
	// topology's events are kept from then on.
	c := f.h.NewClient("u")
	defer c.Close()
	if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
		t.Fatal(err)
	}
	f.publish(t, "T", 1)
	expect(t, pop(t, c), "T:snapshot T:1")
	if n := st.Topologies.Load(); n != 1 {
		t.Fatalf("Topologies = %d, want 1", n)
	}
}

func TestFailedSubscribesLeaveNothing(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxSubscriptions = 1 })
	c := f.h.NewClient("u")
	defer c.Close()
	for i := range 50 {
		if err := c.Subscribe(context.Background(), fmt.Sprintf("missing-%d", i), "", nil); err != ErrNotFound {
			t.Fatalf("subscribe to a missing topology: %v", err)
		}
	}
	if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(context.Background(), "U", "", nil); err == nil {
		t.Fatal("second subscription accepted over MaxSubscriptions=1")
	}
	if n := f.h.Stats().Topologies.Load(); n != 1 {
		t.Fatalf("Topologies = %d after failed subscribes, want 1 (T)", n)
	}
	// Events of the topologies that were refused are not kept.
	f.publishPadded(t, "missing-3", 1, 1000)
	f.publishPadded(t, "U", 1, 1000)
	if got := f.h.Stats().Unwatched.Load(); got != 2 {
		t.Fatalf("Unwatched = %d, want 2", got)
	}
}

func TestRecentSubscriberCanResume(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("u")
	if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
		t.Fatal(err)
	}
	f.publish(t, "T", 1)
	items := pop(t, c)
	expect(t, items, "T:snapshot T:1")
	cursor := items[1].Event.Cursor
	c.Close() // the tab reloads

	// While it is away, T's events are still kept, for HistoryAge.
	f.publish(t, "T", 2)
	f.publish(t, "T", 3)
	d := f.h.NewClient("u")
	defer d.Close()
	if err := d.Subscribe(context.Background(), "T", cursor, nil); err != nil {
		t.Fatal(err)
	}
	items = pop(t, d)
	expect(t, items, "T:2 T:3")
	cursor = items[1].Event.Cursor
	d.Unsubscribe("T", nil)

	// Past HistoryAge nobody is expected back: events are not kept, and
	// a late resume resyncs instead of missing them silently.
	f.advance(6 * time.Minute)
	f.publish(t, "T", 4)
	if n := f.h.Stats().HistoryBytes.Load(); n != 0 {
		t.Fatalf("history of a topology unwatched for 6 minutes holds %d bytes", n)
	}
	e := f.h.NewClient("u")
	defer e.Close()
	if err := e.Subscribe(context.Background(), "T", cursor, nil); err != nil {
		t.Fatal(err)
	}
	expect(t, pop(t, e), "T:snapshot(resync)")
	f.h.Sweep()
}

func TestHistoryBoundedHubWide(t *testing.T) {
	const max, pad = 64 << 10, 4000
	f := newFixture(t, func(c *Config) { c.MaxHistoryBytes = max; c.HistoryBytes = 16 << 10 })
	ids := make([]string, 20)
	readers := make([]*Client, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("busy-%d", i)
		f.snaps.Set(ids[i], "active")
		readers[i] = f.h.NewClient("u")
		defer readers[i].Close()
		if err := readers[i].Subscribe(context.Background(), ids[i], "", nil); err != nil {
			t.Fatal(err)
		}
		expect(t, pop(t, readers[i]), ids[i]+":snapshot")
	}
	st := f.h.Stats()
	var early string
	for n := range 100 {
		i := n % len(ids)
		f.advance(time.Millisecond)
		f.publishPadded(t, ids[i], n, pad)
		if b := st.HistoryBytes.Load(); b > max+pad+100 {
			t.Fatalf("after %d events history holds %d bytes, over the bound %d by more than one event", n+1, b, max)
		}
		// Readers that keep up lose nothing: a dropped history is one
		// they had read already.
		items := pop(t, readers[i])
		if want := fmt.Sprintf("%s:%d", ids[i], n); describe(items) != want {
			t.Fatalf("reader of %s got %s, want %s", ids[i], describe(items), want)
		}
		if n == 0 {
			early = items[0].Event.Cursor
		}
	}
	if st.HistoryDrops.Load() == 0 {
		t.Fatal("no history dropped although 400 KB were published under a 64 KiB bound")
	}
	// The oldest history went first: a resume into it resyncs.
	late := f.h.NewClient("u")
	defer late.Close()
	if err := late.Subscribe(context.Background(), ids[0], early, nil); err != nil {
		t.Fatal(err)
	}
	expect(t, pop(t, late), ids[0]+":snapshot(resync)")
}

func TestTrackedTopologiesBounded(t *testing.T) {
	const max = 64
	f := newFixture(t, func(c *Config) { c.MaxTopologies = max })
	// Subscribers come and go on 300 topologies; each leaves state behind
	// for resume, but only up to the bound.
	for i := range 300 {
		id := fmt.Sprintf("seen-%d", i)
		f.snaps.Set(id, "active")
		c := f.h.NewClient("u")
		if err := c.Subscribe(context.Background(), id, "", nil); err != nil {
			t.Fatal(err)
		}
		c.Close()
		f.advance(time.Millisecond)
		if n := f.h.Stats().Topologies.Load(); n > max {
			t.Fatalf("after %d topologies the hub tracks %d, over the bound %d", i+1, n, max)
		}
	}
	st := f.h.Stats()
	if st.TopologyDrops.Load() == 0 {
		t.Fatal("no topology forgotten")
	}
	// Watched topologies are never forgotten, even over the bound.
	var clients []*Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range max + 10 {
		id := fmt.Sprintf("watched-%d", i)
		f.snaps.Set(id, "active")
		c := f.h.NewClient("u")
		clients = append(clients, c)
		if err := c.Subscribe(context.Background(), id, "", nil); err != nil {
			t.Fatal(err)
		}
		expect(t, pop(t, c), id+":snapshot")
	}
	if st.TopologiesOver.Load() == 0 {
		t.Fatal("a bound held only by watched topologies was not counted")
	}
	for i, c := range clients {
		id := fmt.Sprintf("watched-%d", i)
		f.publish(t, id, i)
		expect(t, pop(t, c), fmt.Sprintf("%s:%d", id, i))
	}
}
