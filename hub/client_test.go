package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	h     *Hub
	snaps *MemorySnapshots
	now   atomic.Int64 // unix nanos
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{snaps: NewMemorySnapshots()}
	f.now.Store(testNow.UnixNano())
	cfg := Config{Snapshots: f.snaps, SnapshotRetry: 10 * time.Millisecond, Now: func() time.Time { return time.Unix(0, f.now.Load()) }}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	for _, id := range []string{"T", "U", "V"} {
		f.snaps.Set(id, "active")
	}
	return f
}

func (f *fixture) advance(d time.Duration) { f.now.Add(int64(d)) }

func (f *fixture) publish(t *testing.T, topology string, n int) {
	t.Helper()
	if err := f.h.HandleMessage("topology."+topology+".status", []byte(fmt.Sprintf(`{"payload":{"n":%d}}`, n))); err != nil {
		t.Fatal(err)
	}
}

// pop waits (with a deadline) until the client has something, then drains it.
func pop(t *testing.T, c *Client) []Item {
	t.Helper()
	select {
	case <-c.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("nothing queued within 5s")
	}
	items, err := c.Pop(context.Background(), nil)
	if err != nil {
		t.Fatalf("Pop: %v", err)
	}
	return items
}

// popNone asserts that nothing is queued.
func popNone(t *testing.T, c *Client) {
	t.Helper()
	select {
	case <-c.Ready():
		items, _ := c.Pop(context.Background(), nil)
		if len(items) > 0 {
			t.Fatalf("want nothing queued, got %s", describe(items))
		}
	default:
	}
}

// describe renders items as "snapshot@seq(resync) status#n ..." for failure messages and comparisons.
func describe(items []Item) string {
	var parts []string
	for _, it := range items {
		switch {
		case it.Raw != nil:
			parts = append(parts, "raw:"+string(it.Raw))
		case it.Err != nil:
			parts = append(parts, "err:"+it.Topology)
		case it.Event.Name == EventSnapshot:
			s := it.Event.Topology + ":snapshot"
			if strings.Contains(string(it.Event.Data), `"resync":true`) {
				s += "(resync)"
			}
			parts = append(parts, s)
		default:
			var d struct{ Payload struct{ N int } }
			_ = json.Unmarshal(it.Event.Data, &d)
			parts = append(parts, fmt.Sprintf("%s:%d", it.Event.Topology, d.Payload.N))
		}
	}
	return strings.Join(parts, " ")
}

func expect(t *testing.T, items []Item, want string) {
	t.Helper()
	if got := describe(items); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestSubscribeSnapshotThenEvents(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("u")
	defer c.Close()
	f.publish(t, "T", 0) // before the subscription: not delivered
	if err := c.Subscribe(context.Background(), "T", "", []byte("ack")); err != nil {
		t.Fatal(err)
	}
	// Published after Subscribe, before the writer pops: after the
	// snapshot, never lost.
	f.publish(t, "T", 1)
	f.publish(t, "U", 9)
	f.publish(t, "T", 2)
	items := pop(t, c)
	expect(t, items, "raw:ack T:snapshot T:1 T:2")
	snap, e1, e2 := items[1].Event, items[2].Event, items[3].Event
	if snap.Seq != 1 || e1.Seq != 2 || e2.Seq != 4 {
		t.Errorf("seqs snapshot %d events %d %d, want 1 2 4", snap.Seq, e1.Seq, e2.Seq)
	}
	if want := fmt.Sprintf("%d-%d", f.h.Epoch(), 1); snap.Cursor != want {
		t.Errorf("snapshot cursor %q, want %q", snap.Cursor, want)
	}
	if string(snap.Data) != `{"topology_id":"T","status":"active","in_flight":[]}` {
		t.Errorf("snapshot data %s", snap.Data)
	}
	if err := c.Subscribe(context.Background(), "T", "", []byte("ack2")); err != nil {
		t.Fatal(err)
	}
	expect(t, pop(t, c), "raw:ack2")
	popNone(t, c)
}

func TestEventSharedAcrossClients(t *testing.T) {
	f := newFixture(t, nil)
	a, b := f.h.NewClient("a"), f.h.NewClient("b")
	defer a.Close()
	defer b.Close()
	for _, c := range []*Client{a, b} {
		if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
			t.Fatal(err)
		}
		pop(t, c)
	}
	f.publish(t, "T", 1)
	ia, ib := pop(t, a), pop(t, b)
	if ia[0].Event != ib[0].Event || &ia[0].Event.Data[0] != &ib[0].Event.Data[0] {
		t.Fatal("subscribers got different copies of one event")
	}
}

func TestOverflowResyncsOnlyTheSlowClient(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueSize = 4 })
	slow, fast := f.h.NewClient("slow"), f.h.NewClient("fast")
	defer slow.Close()
	defer fast.Close()
	for _, c := range []*Client{slow, fast} {
		if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Subscribe(context.Background(), "U", "", nil); err != nil {
			t.Fatal(err)
		}
		expect(t, pop(t, c), "T:snapshot U:snapshot")
	}
	f.publish(t, "U", 100)
	var got []Item
	for i := 1; i <= 10; i++ {
		f.publish(t, "T", i)
		got = append(got, pop(t, fast)...)
	}
	expect(t, got, "U:100 T:1 T:2 T:3 T:4 T:5 T:6 T:7 T:8 T:9 T:10")

	// The slow client's T events were replaced by one resync snapshot
	// whose cursor is the newest event it dropped; U is untouched.
	items := pop(t, slow)
	expect(t, items, "U:100 T:snapshot(resync)")
	if items[1].Event.Seq != got[len(got)-1].Event.Seq {
		t.Errorf("resync cursor %s, want %s", items[1].Event.Cursor, got[len(got)-1].Event.Cursor)
	}
	f.publish(t, "T", 11)
	expect(t, pop(t, slow), "T:11")
	if n := f.h.Stats().Resyncs.Load(); n == 0 {
		t.Error("resync not counted")
	}
}

func TestLogStaysBoundedAndSlowReaderGetsOneSnapshot(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueSize = 8; c.HistorySize = 16 })
	c := f.h.NewClient("slow")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "T", "", nil)
	for i := range 10000 {
		f.publish(t, "T", i)
	}
	tp := f.h.lockTopology("T")
	held := tp.hist.len()
	tp.mu.Unlock()
	if held > 16 {
		t.Fatalf("log holds %d events, bound is 16", held)
	}
	// The first snapshot, never popped, is replaced by a current one: still
	// the first, so not a resync.
	items := pop(t, c)
	expect(t, items, "T:snapshot")
	if want := f.h.seq.Load(); items[0].Event.Seq != want {
		t.Errorf("snapshot reflects %d, want the newest event %d", items[0].Event.Seq, want)
	}
	f.publish(t, "T", 1)
	expect(t, pop(t, c), "T:1")
}

func TestLaggingReaderResyncedByAge(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxLag = time.Second })
	slow, fast := f.h.NewClient("slow"), f.h.NewClient("fast")
	defer slow.Close()
	defer fast.Close()
	for _, c := range []*Client{slow, fast} {
		_ = c.Subscribe(context.Background(), "T", "", nil)
		pop(t, c)
	}
	f.publish(t, "T", 1)
	expect(t, pop(t, fast), "T:1")
	f.advance(500 * time.Millisecond)
	f.publish(t, "T", 2)
	expect(t, pop(t, fast), "T:2")
	f.advance(700 * time.Millisecond)
	// T:1 is now 1.2s old: the slow reader skips to a resync snapshot.
	items := pop(t, slow)
	expect(t, items, "T:snapshot(resync)")
	if n := f.h.Stats().Overflows.Load(); n != 1 {
		t.Errorf("overflows = %d, want 1", n)
	}
	f.publish(t, "T", 3)
	expect(t, pop(t, slow), "T:3")
}

func TestResumeFromCursor(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.HistorySize = 5 })
	a := f.h.NewClient("a")
	defer a.Close()
	_ = a.Subscribe(context.Background(), "T", "", nil)
	pop(t, a)
	for i := 1; i <= 3; i++ {
		f.publish(t, "T", i)
	}
	items := pop(t, a)
	c1 := items[0].Event.Cursor
	last := items[2].Event.Cursor

	resume := func(since string) *Client {
		c := f.h.NewClient("b")
		t.Cleanup(c.Close)
		if err := c.Subscribe(context.Background(), "T", since, nil); err != nil {
			t.Fatal(err)
		}
		return c
	}
	expect(t, pop(t, resume(c1)), "T:2 T:3")
	popNone(t, resume(last)) // up to date: nothing, not even a snapshot

	for _, bad := range []string{"garbage", "1-1", fmt.Sprintf("%d-999999", f.h.Epoch())} {
		expect(t, pop(t, resume(bad)), "T:snapshot(resync)")
	}

	// Beyond the history size: resync.
	items = nil
	for i := 4; i <= 10; i++ {
		f.publish(t, "T", i)
		items = append(items, pop(t, a)...)
	}
	expect(t, pop(t, resume(c1)), "T:snapshot(resync)")
	expect(t, pop(t, resume(last)), "T:snapshot(resync)")

	// Beyond the history age: resync.
	mid := items[len(items)-2].Event.Cursor
	expect(t, pop(t, resume(mid)), "T:10")
	f.advance(6 * time.Minute)
	expect(t, pop(t, resume(mid)), "T:snapshot(resync)")
}

func TestResumeOfUnknownTopologyUsesHubSequence(t *testing.T) {
	f := newFixture(t, nil)
	a := f.h.NewClient("a")
	defer a.Close()
	_ = a.Subscribe(context.Background(), "T", "", nil)
	pop(t, a)
	f.publish(t, "T", 1)
	f.publish(t, "T", 2)
	// V has had no events: its snapshot cursor is the hub's position, and
	// resuming from it later replays V's events.
	b := f.h.NewClient("b")
	defer b.Close()
	_ = b.Subscribe(context.Background(), "V", "", nil)
	snap := pop(t, b)[0].Event
	b.Close()
	f.publish(t, "V", 7)
	c := f.h.NewClient("c")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "V", snap.Cursor, nil)
	expect(t, pop(t, c), "V:7")
}

func TestBusGapResyncsEverySubscription(t *testing.T) {
	f := newFixture(t, nil)
	a, b := f.h.NewClient("a"), f.h.NewClient("b")
	defer a.Close()
	defer b.Close()
	_ = a.Subscribe(context.Background(), "T", "", nil)
	_ = a.Subscribe(context.Background(), "U", "", nil)
	_ = b.Subscribe(context.Background(), "T", "", nil)
	pop(t, a)
	pop(t, b)
	f.publish(t, "T", 1)
	before := pop(t, a)[0].Event.Cursor
	pop(t, b)

	f.h.BusGap()
	// Order across topologies is not defined; within each it is.
	if got := describe(pop(t, a)); got != "T:snapshot(resync) U:snapshot(resync)" && got != "U:snapshot(resync) T:snapshot(resync)" {
		t.Fatalf("after gap: %s", got)
	}
	items := pop(t, b)
	expect(t, items, "T:snapshot(resync)")
	after := items[0].Event.Cursor

	// A cursor from before the gap can no longer be trusted; one from the
	// resync snapshot can.
	f.publish(t, "T", 2)
	c := f.h.NewClient("c")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "T", before, nil)
	expect(t, pop(t, c), "T:snapshot(resync)")
	d := f.h.NewClient("d")
	defer d.Close()
	_ = d.Subscribe(context.Background(), "T", after, nil)
	expect(t, pop(t, d), "T:2")
}

func TestUnsubscribeDropsQueuedEventsAndAcks(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("a")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "T", "", nil)
	_ = c.Subscribe(context.Background(), "U", "", nil)
	pop(t, c)
	f.publish(t, "T", 1)
	f.publish(t, "U", 2)
	c.Unsubscribe("T", []byte("unsub"))
	f.publish(t, "T", 3)
	expect(t, pop(t, c), "raw:unsub U:2") // replies first, then events
	popNone(t, c)
	if c.Subscriptions() != 1 {
		t.Errorf("subscriptions %d, want 1", c.Subscriptions())
	}
	c.Unsubscribe("never", []byte("unsub2"))
	expect(t, pop(t, c), "raw:unsub2")
}

func TestSubscribeNotFound(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("a")
	defer c.Close()
	if err := c.Subscribe(context.Background(), "gone", "", []byte("ack")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	popNone(t, c)
	if c.Subscriptions() != 0 {
		t.Error("subscription kept after not found")
	}
	f.snaps.SetErr(errors.New("redis down"))
	if err := c.Subscribe(context.Background(), "T", "", []byte("ack")); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want the source's error", err)
	}
	popNone(t, c)
	if c.Subscriptions() != 0 {
		t.Error("subscription kept after a failed read")
	}
}

func TestResyncOfDeletedTopologyEndsSubscription(t *testing.T) {
	f := newFixture(t, nil)
	f.snaps.Set("gone", "active")
	c := f.h.NewClient("a")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "gone", "", nil)
	pop(t, c)
	f.snaps.Delete("gone")
	f.h.BusGap()
	f.publish(t, "gone", 1) // logged after the resync it waits behind
	items := pop(t, c)
	if got := describe(items); got != "err:gone" {
		t.Fatalf("got %s: events followed the end of the subscription", got)
	}
	if c.Subscriptions() != 0 {
		t.Error("subscription kept after not found")
	}
}

func TestFirstSnapshotStaysPlainAcrossOutageAndGap(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("a")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "T", "", nil)
	f.snaps.SetErr(errors.New("redis down"))
	f.h.BusGap() // a resync replaces the first snapshot before it is popped
	<-c.Ready()
	if _, err := c.Pop(context.Background(), nil); !errors.Is(err, ErrSnapshotUnavailable) {
		t.Fatalf("err = %v", err)
	}
	f.snaps.SetErr(nil)
	expect(t, pop(t, c), "T:snapshot") // retried by the hub after SnapshotRetry
}

func TestRepliesBounded(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxReplyBytes = 1000 })
	c := f.h.NewClient("a")
	defer c.Close()
	reply := []byte(strings.Repeat("r", 100))
	for range 10 {
		c.Send(reply)
	}
	if c.Reason() != DisconnectNone {
		t.Fatal("disconnected within the bound")
	}
	pop(t, c) // the writer catches up: the budget is back
	for range 10 {
		c.Send(reply)
	}
	if c.Reason() != DisconnectNone {
		t.Fatal("popped replies still counted")
	}
	c.Send(reply)
	select {
	case <-c.Done():
	default:
		t.Fatal("a client piling up replies was not ended")
	}
	if c.Reason() != DisconnectPolicy {
		t.Fatalf("reason %s", c.Reason())
	}
}

func TestSnapshotOutageKeepsOrder(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueSize = 2 })
	c := f.h.NewClient("a")
	defer c.Close()
	_ = c.Subscribe(context.Background(), "U", "", nil)
	_ = c.Subscribe(context.Background(), "T", "", nil)
	pop(t, c)
	f.snaps.SetErr(errors.New("redis down"))
	for i := 1; i <= 3; i++ { // T overflows: it needs a resync
		f.publish(t, "T", i)
	}
	f.publish(t, "U", 4)
	<-c.Ready()
	items, err := c.Pop(context.Background(), nil)
	if !errors.Is(err, ErrSnapshotUnavailable) {
		t.Fatalf("err = %v", err)
	}
	// U flows; T waits for its snapshot, and events logged meanwhile are
	// folded into it.
	expect(t, items, "U:4")
	f.publish(t, "T", 5)
	folded := f.h.seq.Load()
	f.snaps.SetErr(nil)
	items = pop(t, c)
	expect(t, items, "T:snapshot(resync)")
	if items[0].Event.Seq != folded {
		t.Errorf("snapshot seq %d does not cover the events logged before its read (%d)", items[0].Event.Seq, folded)
	}
	f.publish(t, "T", 6)
	expect(t, pop(t, c), "T:6")
}

func TestTooManySubscriptions(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxSubscriptions = 2 })
	c := f.h.NewClient("a")
	defer c.Close()
	if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(context.Background(), "U", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(context.Background(), "V", "", nil); !errors.Is(err, ErrTooManySubscriptions) {
		t.Fatalf("third subscribe: %v", err)
	}
	if err := c.Subscribe(context.Background(), "a.b", "", nil); !errors.Is(err, ErrInvalidTopology) {
		t.Fatalf("invalid id: %v", err)
	}
}

func TestCloseUnregisters(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("a")
	_ = c.Subscribe(context.Background(), "T", "", nil)
	if f.h.Clients() != 1 {
		t.Fatal("client not registered")
	}
	c.Close()
	c.Close()
	if f.h.Clients() != 0 {
		t.Fatal("client still registered")
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed")
	}
	if err := c.Subscribe(context.Background(), "T", "", nil); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
	f.publish(t, "T", 1) // no subscriber left; must not panic
	f.advance(10 * time.Minute)
	f.h.Sweep()
	for i := range f.h.shards {
		if n := len(f.h.shards[i].topologies); n != 0 {
			t.Fatalf("sweep left %d topologies", n)
		}
	}
}

func TestDisconnectReason(t *testing.T) {
	f := newFixture(t, nil)
	c := f.h.NewClient("a")
	defer c.Close()
	if c.Reason() != DisconnectNone {
		t.Fatal("reason before disconnect")
	}
	f.h.Shutdown(DisconnectShutdown)
	<-c.Done()
	if c.Reason() != DisconnectShutdown {
		t.Fatalf("reason %v", c.Reason())
	}
}

// TestConcurrentDelivery runs publishers, subscribers and unsubscribers at
// once (meant for -race) and checks every client sees each topology's
// events in increasing order.
func TestConcurrentDelivery(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueSize = 16 })
	topologies := []string{"T", "U", "V"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			c := f.h.NewClient(fmt.Sprint(i))
			defer c.Close()
			last := map[string]uint64{}
			for j := 0; ctx.Err() == nil; j++ {
				id := topologies[j%len(topologies)]
				if j%7 == 0 {
					c.Unsubscribe(id, nil)
					delete(last, id)
				} else {
					_ = c.Subscribe(context.Background(), id, "", nil)
				}
				items, _ := c.Pop(ctx, nil)
				for _, it := range items {
					if it.Event == nil || it.Event.Name == EventSnapshot {
						continue
					}
					if it.Event.Seq <= last[it.Event.Topology] {
						failures.Add(1)
					}
					last[it.Event.Topology] = it.Event.Seq
				}
			}
		})
	}
	for i := range 3000 {
		f.publish(t, topologies[i%len(topologies)], i)
	}
	cancel()
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d out-of-order deliveries", failures.Load())
	}
	if f.h.Clients() != 0 {
		t.Fatalf("%d clients left", f.h.Clients())
	}
}
