package hub

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedSource holds every snapshot read until the gate opens.
type gatedSource struct {
	*MemorySnapshots
	gate  chan struct{}
	calls atomic.Int64
}

func (g *gatedSource) Snapshot(ctx context.Context, id string) (Snapshot, error) {
	g.calls.Add(1)
	<-g.gate
	return g.MemorySnapshots.Snapshot(ctx, id)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

func TestSnapshotReadsShareOnlyReadsThatStartedLateEnough(t *testing.T) {
	mem := NewMemorySnapshots()
	mem.Set("T", "active")
	src := &gatedSource{MemorySnapshots: mem, gate: make(chan struct{})}
	var seq atomic.Uint64
	var stats Stats
	r := &snapshotReads{src: src, seq: &seq, stats: &stats, now: time.Now, flights: map[string]*snapshotFlight{}}
	var wg sync.WaitGroup
	read := func(want uint64) {
		wg.Go(func() {
			if _, err := r.read(context.Background(), "T", want); err != nil {
				t.Errorf("read %d: %v", want, err)
			}
		})
	}

	seq.Store(10)
	read(5) // starts a read at 10
	waitUntil(t, "the first read", func() bool { return src.calls.Load() == 1 })
	read(10) // reflected by a read started at 10: shares it
	waitUntil(t, "the share", func() bool { return stats.SnapshotsShared.Load() == 1 })

	seq.Store(12) // events 11 and 12 arrive while the read is under way
	read(12)      // the read started at 10 may miss them: a new one
	waitUntil(t, "the second read", func() bool { return src.calls.Load() == 2 })
	read(11)
	waitUntil(t, "the second share", func() bool { return stats.SnapshotsShared.Load() == 2 })

	// A waiter that leaves does not disturb the read or its other waiters.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.read(ctx, "T", 12); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}

	close(src.gate)
	wg.Wait()
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("%d reads from the source, want 2", n)
	}
	if n := stats.SnapshotReads.Load(); n != 2 {
		t.Fatalf("SnapshotReads %d", n)
	}
	waitUntil(t, "flights forgotten", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.flights) == 0
	})
}

// After a bus gap every subscriber needs a snapshot at once; they share
// the reads.
func TestBusGapSnapshotsAreShared(t *testing.T) {
	mem := NewMemorySnapshots()
	mem.Set("T", "active")
	src := &gatedSource{MemorySnapshots: mem, gate: make(chan struct{})}
	close(src.gate)
	h, err := New(Config{Snapshots: src})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	clients := make([]*Client, n)
	for i := range clients {
		clients[i] = h.NewClient("u")
		defer clients[i].Close()
		_ = clients[i].Subscribe(context.Background(), "T", "", nil)
		pop(t, clients[i])
	}
	before := src.calls.Load()
	src.gate = make(chan struct{}) // hold the next reads
	h.BusGap()
	var wg sync.WaitGroup
	got := make([]string, n)
	for i, c := range clients {
		wg.Go(func() {
			<-c.Ready()
			items, err := c.Pop(context.Background(), nil)
			got[i] = describe(items)
			if err != nil {
				got[i] = err.Error()
			}
		})
	}
	waitUntil(t, "every client asking", func() bool {
		return h.stats.SnapshotReads.Load()+h.stats.SnapshotsShared.Load() >= n*2
	})
	close(src.gate)
	wg.Wait()
	for i, g := range got {
		if g != "T:snapshot(resync)" {
			t.Fatalf("client %d got %s", i, g)
		}
	}
	if reads := src.calls.Load() - before; reads != 1 {
		t.Fatalf("%d reads for %d resync snapshots of one topology, want 1", reads, n)
	}
}

// countingSource counts snapshot reads.
type countingSource struct {
	*MemorySnapshots
	calls atomic.Int64
}

func (c *countingSource) Snapshot(ctx context.Context, id string) (Snapshot, error) {
	c.calls.Add(1)
	return c.MemorySnapshots.Snapshot(ctx, id)
}

func TestFinishedSnapshotReusedUntilAnEventOrTheWindowEnds(t *testing.T) {
	src := &countingSource{MemorySnapshots: NewMemorySnapshots()}
	src.Set("T", "active")
	f := newFixture(t, func(c *Config) { c.Snapshots = src; c.SnapshotReuse = time.Second })
	subscribe := func() *Event {
		t.Helper()
		c := f.h.NewClient("u")
		t.Cleanup(c.Close)
		if err := c.Subscribe(context.Background(), "T", "", nil); err != nil {
			t.Fatal(err)
		}
		return pop(t, c)[0].Event
	}
	first := subscribe()
	f.publish(t, "U", 1) // another topology's event changes nothing for T
	if again := subscribe(); again != first || src.calls.Load() != 1 {
		t.Fatalf("second subscriber: %d reads, same event %v; want the first read shared", src.calls.Load(), again == first)
	}
	f.publish(t, "T", 2) // T changed: the read may miss it
	if ev := subscribe(); src.calls.Load() != 2 || ev.Seq != f.h.seq.Load() {
		t.Fatalf("after an event of T: %d reads, snapshot seq %d; want a new read reflecting %d", src.calls.Load(), ev.Seq, f.h.seq.Load())
	}
	f.advance(2 * time.Second)
	subscribe()
	if src.calls.Load() != 3 {
		t.Fatalf("after the window: %d reads, want 3", src.calls.Load())
	}
	// Not found is never reused: a topology created just after is seen.
	c := f.h.NewClient("u")
	defer c.Close()
	if err := c.Subscribe(context.Background(), "N", "", nil); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	src.Set("N", "active")
	if err := c.Subscribe(context.Background(), "N", "", nil); err != nil {
		t.Fatalf("created after a not-found: %v", err)
	}
	f.advance(2 * time.Second)
	f.h.Sweep()
	f.h.snapshots.mu.Lock()
	n := len(f.h.snapshots.flights)
	f.h.snapshots.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d reads kept after Sweep past the window, want 0", n)
	}
}
