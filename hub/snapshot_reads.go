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

// snapshotReads coalesces concurrent snapshot reads of one topology.
// After a bus gap every subscriber of every topology needs a snapshot at
// once: 5,000 clients of one topology would otherwise be 5,000 reads of
// the same keys.
//
// A read may only be shared with a snapshot that must reflect events up
// to seq when it started after the hub had received event seq: a producer
// writes its state before it publishes, so such a read sees it. A read
// started earlier could miss that event, so a newer one is started.
type snapshotReads struct {
	src   SnapshotSource
	seq   *atomic.Uint64 // the hub's sequence
	stats *Stats

	mu      sync.Mutex
	flights map[string]*snapshotFlight // the newest read per topology
}

type snapshotFlight struct {
	start uint64        // the hub's sequence when the read began
	done  chan struct{} // closed when snap and err are set
	snap  Snapshot
	err   error
}

// read returns a snapshot of id that reflects every event up to seq, and
// the sequence it is known to reflect: the hub's when the read began, at
// least seq.
func (r *snapshotReads) read(ctx context.Context, id string, seq uint64) (Snapshot, uint64, error) {
	r.mu.Lock()
	f := r.flights[id]
	if f == nil || f.start < seq {
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
		return f.snap, f.start, f.err
	case <-ctx.Done():
		return Snapshot{}, 0, ctx.Err()
	}
}

func (r *snapshotReads) run(id string, f *snapshotFlight) {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotReadTimeout)
	defer cancel()
	f.snap, f.err = r.src.Snapshot(ctx, id)
	close(f.done)
	r.mu.Lock()
	if r.flights[id] == f {
		delete(r.flights, id)
	}
	r.mu.Unlock()
}
