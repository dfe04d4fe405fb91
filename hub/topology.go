package hub

import (
	"sync"
	"sync/atomic"
	"time"
)

// topology is the hub's state for one topology id: its subscribers and
// its log, which is both the delivery queue every subscriber reads at its
// own cursor and the history a resume replays. All fields are guarded by
// mu.
type topology struct {
	id string
	mu sync.Mutex
	// dead is set when Sweep has forgotten this state; a holder of a
	// stale pointer must look the id up again.
	dead bool
	subs []*subscription
	// waiters are the subscriptions that had read everything: the next
	// event wakes them, and only them (entries whose waiting flag is off
	// are stale and skipped).
	waiters, spareWaiters []*subscription
	// end is the log position after the newest event: positions count
	// this topology's events since it was created, and hist holds the
	// last hist.len() of them.
	end uint64
	// last is the cursor sequence of the newest event (or gap) of this
	// topology; a snapshot read now reflects at least it.
	last uint64
	// floor: every event of this topology with a sequence above floor is
	// in hist. A cursor below floor cannot be replayed.
	floor uint64
	hist  ring
	// histBytes is the data size of the events in hist; maxBytes bounds it.
	histBytes, maxBytes int
	// total is the hub-wide data size of all histories, kept in step with
	// histBytes.
	total *atomic.Int64
	// idleSince is when the last acknowledged subscription ended; for
	// HistoryAge after it, events are still kept so that the subscriber
	// can resume. Zero: never subscribed (or forgotten).
	idleSince time.Time
}

func newTopology(id string, seq uint64, historySize, historyBytes int, total *atomic.Int64) *topology {
	return &topology{id: id, last: seq, floor: seq, hist: ring{max: historySize}, maxBytes: historyBytes, total: total}
}

// keepsHistory reports whether events are recorded: while the topology
// has a subscriber, or had an acknowledged one within age. Events of a
// topology nobody watches are never held, so a producer cannot fill
// memory with them. Lock should be held.
func (t *topology) keepsHistory(now time.Time, age time.Duration) bool {
	return len(t.subs) > 0 || (!t.idleSince.IsZero() && now.Sub(t.idleSince) < age)
}

// skip accounts for event seq that was not recorded: nothing up to it can
// be replayed, and what was held goes too. Lock should be held.
func (t *topology) skip(seq uint64) {
	for t.hist.len() > 0 {
		t.forget(t.hist.popOldest())
	}
	t.floor = seq
	t.last = seq
}

// drop forgets the whole history; readers that still needed some of it
// resync, readers that had read everything are not disturbed. Lock should
// be held.
func (t *topology) drop() {
	for t.hist.len() > 0 {
		t.forget(t.hist.popOldest())
	}
}

// newest returns the newest event held, or nil. Lock should be held.
func (t *topology) newest() *Event {
	if t.hist.len() == 0 {
		return nil
	}
	return t.hist.at(t.hist.len() - 1)
}

// record appends ev to the history, dropping the oldest events beyond the
// count or byte bound (the newest is always kept). Lock should be held.
func (t *topology) record(ev *Event) {
	if old := t.hist.push(ev); old != nil {
		t.forget(old)
	}
	t.end++
	t.histBytes += len(ev.Data)
	t.total.Add(int64(len(ev.Data)))
	for t.histBytes > t.maxBytes && t.hist.len() > 1 {
		t.forget(t.hist.popOldest())
	}
	t.last = ev.Seq
}

// forget accounts for an event that left the history. Lock should be held.
func (t *topology) forget(ev *Event) {
	t.floor = ev.Seq
	t.histBytes -= len(ev.Data)
	t.total.Add(-int64(len(ev.Data)))
}

// cut forgets the history after a bus gap: nothing before gap can be
// replayed. Lock should be held.
func (t *topology) cut(gap uint64) {
	t.drop()
	t.floor = gap
	t.last = gap
}

// expire drops events received before cutoff. Lock should be held.
func (t *topology) expire(cutoff time.Time) {
	for ev := t.hist.oldest(); ev != nil && ev.received.Before(cutoff); ev = t.hist.oldest() {
		t.forget(t.hist.popOldest())
	}
}

// oldestPosition is the log position of the oldest event held. Lock
// should be held.
func (t *topology) oldestPosition() uint64 { return t.end - uint64(t.hist.len()) }

// at returns the event at log position pos, which must be held. Lock
// should be held.
func (t *topology) at(pos uint64) *Event { return t.hist.at(int(pos - t.oldestPosition())) }

// behind reports whether a reader at pos has fallen too far behind to be
// given the events: off the log, more than maxEvents behind, or its next
// event received before cutoff (zero: no age bound). Lock should be held.
func (t *topology) behind(pos uint64, maxEvents int, cutoff time.Time) bool {
	if pos < t.oldestPosition() || t.end-pos > uint64(maxEvents) {
		return true
	}
	return !cutoff.IsZero() && t.at(pos).received.Before(cutoff)
}

// positionAfter returns the log position of the first event after cursor
// sequence seq, or ok=false when the events after it are no longer all
// held (or seq is not a position of this hub). Lock should be held.
func (t *topology) positionAfter(seq, newest uint64) (pos uint64, ok bool) {
	if seq < t.floor || seq > newest {
		return 0, false
	}
	pos = t.end
	for i := t.hist.len() - 1; i >= 0 && t.hist.at(i).Seq > seq; i-- {
		pos--
	}
	return pos, true
}

// takeWaiters returns the waiting subscriptions and clears the list;
// give the slice back with returnWaiters. Lock should be held.
func (t *topology) takeWaiters() []*subscription {
	ws := t.waiters
	t.waiters, t.spareWaiters = t.spareWaiters[:0], nil
	n := 0
	for _, s := range ws {
		if s.waiting && s.active {
			s.waiting = false
			ws[n] = s
			n++
		}
	}
	clear(ws[n:])
	return ws[:n]
}

// returnWaiters keeps a slice from takeWaiters for reuse. Lock should be
// held.
func (t *topology) returnWaiters(ws []*subscription) {
	if t.spareWaiters == nil && cap(ws) <= 4*len(t.subs)+64 {
		clear(ws)
		t.spareWaiters = ws[:0]
	}
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
	s.waiting = false
	if len(t.subs) == 0 && cap(t.subs) > 64 {
		t.subs = nil
	}
	// Stale waiters of a quiet topology are dropped here, so subscribe
	// and unsubscribe churn cannot grow the list without bound.
	if len(t.waiters) > 2*len(t.subs)+16 {
		n := 0
		for _, w := range t.waiters {
			if w.waiting && w.active {
				t.waiters[n] = w
				n++
			}
		}
		clear(t.waiters[n:])
		t.waiters = t.waiters[:n]
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

// at returns the i-th oldest event held (0 is the oldest).
func (r *ring) at(i int) *Event { return r.buf[(r.head+i)%len(r.buf)] }

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
