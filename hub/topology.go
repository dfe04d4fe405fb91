package hub

import (
	"sync"
	"time"
)

// topology is the hub's state for one topology id: its subscribers and
// its recent history. All fields are guarded by mu.
type topology struct {
	id string
	mu sync.Mutex
	// dead is set when Sweep has forgotten this state; a holder of a
	// stale pointer must look the id up again.
	dead bool
	subs []*subscription
	// last is the cursor sequence of the newest event (or gap) of this
	// topology; a snapshot read now reflects at least it.
	last uint64
	// floor: every event of this topology with a sequence above floor is
	// in hist. A cursor below floor cannot be replayed.
	floor uint64
	hist  ring
}

func newTopology(id string, seq uint64, historySize int) *topology {
	return &topology{id: id, last: seq, floor: seq, hist: ring{buf: make([]*Event, 0, min(historySize, 16)), max: historySize}}
}

// record appends ev to the history. Lock should be held.
func (t *topology) record(ev *Event) {
	if old := t.hist.push(ev); old != nil {
		t.floor = old.Seq
	}
	t.last = ev.Seq
}

// cut forgets the history after a bus gap: nothing before gap can be
// replayed. Lock should be held.
func (t *topology) cut(gap uint64) {
	t.hist.clear()
	t.floor = gap
	t.last = gap
}

// expire drops events received before cutoff. Lock should be held.
func (t *topology) expire(cutoff time.Time) {
	n := 0
	t.hist.each(func(ev *Event) {
		if ev.received.Before(cutoff) {
			n++
			t.floor = ev.Seq
		}
	})
	if n > 0 {
		t.hist.dropOldest(n)
	}
}

// since returns the events after seq, or ok=false when they are no longer
// all held (or seq is not a position of this hub). Lock should be held.
func (t *topology) since(seq, newest uint64) (evs []*Event, ok bool) {
	if seq < t.floor || seq > newest {
		return nil, false
	}
	t.hist.each(func(ev *Event) {
		if ev.Seq > seq {
			evs = append(evs, ev)
		}
	})
	return evs, true
}

// addSub registers s. Lock should be held.
func (t *topology) addSub(s *subscription) {
	s.index = len(t.subs)
	t.subs = append(t.subs, s)
}

// removeSub unregisters s. Lock should be held.
func (t *topology) removeSub(s *subscription) {
	i := s.index
	if i < 0 || i >= len(t.subs) || t.subs[i] != s {
		return
	}
	last := len(t.subs) - 1
	t.subs[i] = t.subs[last]
	t.subs[i].index = i
	t.subs[last] = nil
	t.subs = t.subs[:last]
	s.index = -1
	if len(t.subs) == 0 && cap(t.subs) > 64 {
		t.subs = nil
	}
}

// ring is a bounded FIFO of events that grows on demand up to max.
type ring struct {
	buf   []*Event
	start int // index of the oldest event once buf is full
	max   int
}

func (r *ring) len() int { return len(r.buf) }

// push appends ev and returns the event it pushed out, if any.
func (r *ring) push(ev *Event) (evicted *Event) {
	if len(r.buf) < r.max {
		r.buf = append(r.buf, ev)
		return nil
	}
	evicted = r.buf[r.start]
	r.buf[r.start] = ev
	r.start = (r.start + 1) % len(r.buf)
	return evicted
}

// dropOldest removes the k oldest events. Expiry is rare and off the hot
// path, so the ring is simply rebuilt in order.
func (r *ring) dropOldest(k int) {
	n := len(r.buf)
	out := make([]*Event, 0, max(n-k, 0))
	for i := k; i < n; i++ {
		out = append(out, r.buf[(r.start+i)%n])
	}
	r.buf, r.start = out, 0
}

func (r *ring) clear() {
	clear(r.buf)
	r.buf, r.start = r.buf[:0], 0
}

func (r *ring) each(fn func(*Event)) {
	n := len(r.buf)
	for i := 0; i < n; i++ {
		fn(r.buf[(r.start+i)%n])
	}
}
