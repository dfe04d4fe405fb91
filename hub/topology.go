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
	// histBytes is the data size of the events in hist; maxBytes bounds it.
	histBytes, maxBytes int
}

func newTopology(id string, seq uint64, historySize, historyBytes int) *topology {
	return &topology{id: id, last: seq, floor: seq, hist: ring{max: historySize}, maxBytes: historyBytes}
}

// record appends ev to the history, dropping the oldest events beyond the
// count or byte bound (the newest is always kept). Lock should be held.
func (t *topology) record(ev *Event) {
	if old := t.hist.push(ev); old != nil {
		t.forget(old)
	}
	t.histBytes += len(ev.Data)
	for t.histBytes > t.maxBytes && t.hist.len() > 1 {
		t.forget(t.hist.popOldest())
	}
	t.last = ev.Seq
}

// forget accounts for an event that left the history. Lock should be held.
func (t *topology) forget(ev *Event) {
	t.floor = ev.Seq
	t.histBytes -= len(ev.Data)
}

// cut forgets the history after a bus gap: nothing before gap can be
// replayed. Lock should be held.
func (t *topology) cut(gap uint64) {
	t.hist.clear()
	t.histBytes = 0
	t.floor = gap
	t.last = gap
}

// expire drops events received before cutoff. Lock should be held.
func (t *topology) expire(cutoff time.Time) {
	for ev := t.hist.oldest(); ev != nil && ev.received.Before(cutoff); ev = t.hist.oldest() {
		t.forget(t.hist.popOldest())
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

// ring is a bounded FIFO of events: a circular buffer that grows on
// demand (doubling) up to max, so a quiet topology holds little.
type ring struct {
	buf     []*Event // len(buf) is the current capacity
	head, n int
	max     int
}

func (r *ring) len() int { return r.n }

// push appends ev and returns the event it pushed out, if any.
func (r *ring) push(ev *Event) (evicted *Event) {
	if r.n == len(r.buf) {
		if len(r.buf) < r.max {
			r.grow()
		} else {
			evicted = r.popOldest()
		}
	}
	r.buf[(r.head+r.n)%len(r.buf)] = ev
	r.n++
	return evicted
}

func (r *ring) grow() {
	buf := make([]*Event, min(max(4, 2*len(r.buf)), r.max))
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

func (r *ring) oldest() *Event {
	if r.n == 0 {
		return nil
	}
	return r.buf[r.head]
}

// popOldest removes and returns the oldest event, or nil.
func (r *ring) popOldest() *Event {
	if r.n == 0 {
		return nil
	}
	ev := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return ev
}

func (r *ring) clear() {
	clear(r.buf)
	r.head, r.n = 0, 0
}

func (r *ring) each(fn func(*Event)) {
	for i := range r.n {
		fn(r.buf[(r.head+i)%len(r.buf)])
	}
}
