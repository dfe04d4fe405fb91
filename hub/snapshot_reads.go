package hub

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// snapshotReadTimeout bounds one shared snapshot read; it runs on its own
// context so that the client that started it leaving does not fail the
// others waiting for it.
const snapshotReadTimeout = 10 * time.Second

// snapshotReads shares snapshot reads of one topology, those under way
// and, for Config.SnapshotReuse, those just finished. After a bus gap
// every subscriber of every topology needs a snapshot at once, and after
// a hub restart every editor subscribes again: 5,000 clients of one
// topology would otherwise be 5,000 reads of the same keys, and as many
// encodings of the same bytes.
//
// A read may only be shared with a snapshot that must reflect events up
// to seq when it started after the hub had received event seq: a producer
// writes its state before it publishes, so such a read sees it. A read
// started earlier could miss that event, so a newer one is started. A
// finished read stays valid by that rule until an event arrives; reuse
// only bounds how long a change that is never published (a topology
// deleted without an event) can go unseen.
type snapshotReads struct {
	src   SnapshotSource
	seq   *atomic.Uint64 // the hub's sequence
	stats *Stats
	reuse time.Duration // how long a finished read is shared; 0: not at all
	now   func() time.Time

	mu      sync.Mutex
	flights map[string]*snapshotFlight // the newest read per topology
}

type snapshotFlight struct {
	start  uint64        // the hub's sequence when the read began
	done   chan struct{} // closed when snap and err are set
	snap   Snapshot
	err    error
	doneAt time.Time // when it finished; guarded by snapshotReads.mu

	// The snapshot's event, encoded once per kind for every subscriber
	// that shares the read.
	plain, resync struct {
		once sync.Once
		ev   *Event
	}
}

// read returns a finished read of id that reflects every event up to seq:
// its sequence (start) is the hub's when it began, at least seq.
func (r *snapshotReads) read(ctx context.Context, id string, seq uint64) (*snapshotFlight, error) {
	r.mu.Lock()
	f := r.flights[id]
	if f == nil || f.start < seq || (!f.doneAt.IsZero() && r.now().Sub(f.doneAt) > r.reuse) {
		f = &snapshotFlight{start: r.seq.Load(), done: make(chan struct{})}
		r.flights[id] = f
		r.stats.SnapshotReads.Add(1)
		go r.run(id, f)
	} else {
		r.stats.SnapshotsShared.Add(1)
	}
	r.mu.Unlock()
	select {
	case <-f.done:
		return f, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *snapshotReads) run(id string, f *snapshotFlight) {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotReadTimeout)
	defer cancel()
	f.snap, f.err = r.src.Snapshot(ctx, id)
	f.snap.TopologyID = id
	r.mu.Lock()
	switch {
	case r.flights[id] != f:
	case f.err != nil || r.reuse <= 0:
		delete(r.flights, id) // failures and not-found are never reused
	default:
		f.doneAt = r.now()
	}
	r.mu.Unlock()
	close(f.done)
}

// expire forgets finished reads older than the reuse window.
func (r *snapshotReads) expire() {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, f := range r.flights {
		if !f.doneAt.IsZero() && now.Sub(f.doneAt) > r.reuse {
			delete(r.flights, id)
		}
	}
}

// event is the finished read as a snapshot event, encoded once per kind.
// Its cursor is the newest event the read is known to reflect: resuming
// from it misses nothing.
func (f *snapshotFlight) event(h *Hub, resync bool) *Event {
	v := &f.plain
	if resync {
		v = &f.resync
	}
	v.once.Do(func() {
		v.ev = &Event{
			Topology: f.snap.TopologyID,
			Name:     EventSnapshot,
			Seq:      f.start,
			Cursor:   h.cursor(f.start),
			Data:     EncodeSnapshot(f.snap, resync),
		}
	})
	return v.ev
}
