package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DisconnectReason says why the hub ended a client. Transports map it to
// a close code (WebSocket) or to the end of the stream (SSE).
type DisconnectReason int

const (
	// DisconnectNone: the client has not been ended by the hub.
	DisconnectNone DisconnectReason = iota
	// DisconnectShutdown: the hub is stopping. WebSocket 1001; the client
	// should reconnect (to another instance, or to this one once it is back).
	DisconnectShutdown
	// DisconnectExpired: the credentials that opened the connection
	// expired without a refresh. WebSocket 4001; reconnect with fresh
	// credentials.
	DisconnectExpired
	// DisconnectRevoked: the token was revoked. WebSocket 4001; do not
	// reconnect with the same credentials.
	DisconnectRevoked
	// DisconnectPolicy: sustained abuse of the control channel. WebSocket
	// 1008; reconnecting at once is pointless.
	DisconnectPolicy
)

func (r DisconnectReason) String() string {
	switch r {
	case DisconnectShutdown:
		return "shutdown"
	case DisconnectExpired:
		return "expired"
	case DisconnectRevoked:
		return "revoked"
	case DisconnectPolicy:
		return "policy"
	}
	return "none"
}

// ErrSnapshotUnavailable is returned by Pop when a resync snapshot could
// not be read for a reason other than ErrNotFound. The hub retries it
// after Config.SnapshotRetry by itself (Ready fires again then); the
// transport only logs it.
var ErrSnapshotUnavailable = errors.New("snapshot unavailable")

// A Client is one connection's view of the hub, whatever its transport:
// its subscriptions, each a cursor into its topology's log, and a short
// queue of transport replies.
//
// Nothing is copied per client when an event is published: the bus
// reader appends the event to the topology's log once and wakes only the
// subscriptions that had caught up (each at most once until it reads
// again). The transport's writer, woken through Ready (or the function
// given to SetWake), reads each woken subscription's events from the log
// at its own cursor with Pop. A subscription that has fallen more than
// Config.QueueSize events or Config.MaxLag behind, or off the end of the
// log, gets one resync snapshot instead of the events it missed.
type Client struct {
	hub  *Hub
	user string

	ready  chan struct{}          // capacity 1: "Pop may have something"
	onWake atomic.Pointer[func()] // replaces ready when set (SetWake)

	doneOnce sync.Once
	done     chan struct{}
	reason   atomic.Int32 // a DisconnectReason, stored before done is closed

	tokenID atomic.Pointer[string]

	// mu guards the fields below. Lock order: a topology's mu, then mu.
	mu       sync.Mutex
	closed   bool
	subs     map[string]*subscription
	raws     [][]byte        // transport replies not yet popped, in order
	rawBytes int             // their size
	pending  []*subscription // subscriptions that may have something to read
	stalled  []*subscription // resyncs whose snapshot read failed, retried later
	retry    *time.Timer     // re-pends stalled; nil until first needed
	spare    []*subscription // a drained pending slice, kept for reuse
}

// subscription is one client's cursor into one topology's log.
//
// Guarded by the topology's mu: index, waiting, next, marker, first.
// Guarded by the client's mu: pending, stalled, held. active is written with
// both locks held, so either suffices to read it.
type subscription struct {
	client *Client
	topo   *topology
	index  int // in topo.subs

	active  bool
	waiting bool // in topo.waiters: caught up, wake me on the next event
	pending bool // in client.pending
	stalled bool // in client.stalled
	held    bool // Subscribe has not queued the ack yet: not pended before it

	next   uint64  // log position of the next event to deliver
	marker *marker // a snapshot to read before the events from next on
	first  *Event  // the first snapshot, read by Subscribe, not yet popped
}

// marker is a snapshot to read when the writer reaches it.
type marker struct {
	seq    uint64 // the newest event the snapshot will reflect
	resync bool
}

// An Item is one thing for the transport to write.
type Item struct {
	// Event is a bus event or a snapshot, with cached frames.
	Event *Event
	// Raw is a transport message queued with Send, Subscribe or
	// Unsubscribe, written as is.
	Raw []byte
	// Err, with Topology, reports that the topology is gone
	// (ErrNotFound) and its subscription has ended.
	Topology string
	Err      error
}

// NewClient registers a client for user.
func (h *Hub) NewClient(user string) *Client {
	c := &Client{
		hub:   h,
		user:  user,
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
		subs:  map[string]*subscription{},
	}
	h.clientsMu.Lock()
	h.clients[c] = struct{}{}
	h.clientsMu.Unlock()
	return c
}

// User returns the user the client was opened for.
func (c *Client) User() string { return c.user }

// SetTokenID records the id (jti) of the credential the connection now
// rests on, so a revocation can find it; a refresh replaces it.
func (c *Client) SetTokenID(jti string) { c.tokenID.Store(&jti) }

// TokenID returns the id recorded by SetTokenID, or "".
func (c *Client) TokenID() string {
	if p := c.tokenID.Load(); p != nil {
		return *p
	}
	return ""
}

// SetWake makes the hub call fn, instead of signalling Ready, whenever
// the client may have something for Pop and when it is disconnected. fn
// must not block: a transport uses it to start a writer only when there
// is something to write. A wake-up missed before the call (the client
// was disconnected, or sent something) is delivered by it.
func (c *Client) SetWake(fn func()) {
	c.onWake.Store(&fn)
	if c.Reason() != DisconnectNone || c.Pending() {
		fn()
	}
}

// Ready fires when Pop may have something, and when Done is closed.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Done is closed when the hub ends the client; Reason says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Reason says why Done was closed.
func (c *Client) Reason() DisconnectReason {
	return DisconnectReason(c.reason.Load())
}

// Disconnect ends the client for reason; its transport sees Done (and a
// wake-up) and closes. Later calls do nothing.
func (c *Client) Disconnect(reason DisconnectReason) {
	fired := false
	c.doneOnce.Do(func() {
		c.reason.Store(int32(reason))
		close(c.done)
		fired = true
	})
	if fired {
		c.signal()
	}
}

func (c *Client) signal() {
	if fn := c.onWake.Load(); fn != nil {
		(*fn)()
		return
	}
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Pending reports whether Pop may have something: a reply or a
// subscription woken since the last Pop.
func (c *Client) Pending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.raws) > 0 || len(c.pending) > 0
}

// Subscriptions returns how many topologies the client is subscribed to.
func (c *Client) Subscriptions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.subs)
}

// Subscribe registers the client for topology id, reads what it needs
// from the snapshot source, and queues ack (if any) followed by either
// the topology's snapshot or, with a since cursor that the history still
// covers, exactly the events after it (otherwise a snapshot with
// "resync":true).
//
// The subscription is registered before the snapshot is read, so an
// event published while Subscribe runs is delivered after the snapshot
// and none is lost. The same read tells whether the topology exists: a
// missing one gives ErrNotFound and leaves nothing registered or queued,
// and a failed read gives the source's error, likewise. Subscribing
// again to a subscribed topology queues only the ack.
func (c *Client) Subscribe(ctx context.Context, id, since string, ack []byte) error {
	if err := ValidateTopologyID(id); err != nil {
		return err
	}
	h := c.hub
	t := h.lockTopology(id)
	c.mu.Lock()
	s, err := c.registerLocked(t, id)
	if s == nil || err != nil {
		if err == nil {
			c.queueRawLocked(ack) // already subscribed
		}
		c.mu.Unlock()
		t.mu.Unlock()
		if err == nil {
			c.signal()
		} else {
			h.release(t)
		}
		return err
	}
	c.mu.Unlock()
	mk := marker{seq: t.last}
	replay := false
	if since != "" {
		mk.resync = true
		if epoch, seq, ok := ParseCursor(since); ok && epoch == h.epoch {
			t.expire(h.cfg.Now().Add(-h.cfg.HistoryAge))
			if pos, ok := t.positionAfter(seq, h.seq.Load()); ok && t.end-pos <= uint64(h.cfg.QueueSize) {
				s.next, replay = pos, true
			}
		}
	}
	t.mu.Unlock()

	// One read answers existence and, unless the history replays, gives
	// the snapshot. It may be shared with other subscribers' reads that
	// started after event mk.seq was received.
	var snap *Event
	if replay {
		var ok bool
		if ok, err = h.cfg.Snapshots.Exists(ctx, id); err == nil && !ok {
			err = ErrNotFound
		}
	} else {
		snap, err = h.snapshotEvent(ctx, id, mk)
	}
	if err != nil {
		c.endSubscription(s)
		if errors.Is(err, ErrNotFound) {
			return ErrNotFound
		}
		return fmt.Errorf("subscribe %q: %w", id, err)
	}
	t.mu.Lock()
	c.mu.Lock()
	if !s.active {
		// Unsubscribed or closed meanwhile.
		c.mu.Unlock()
		t.mu.Unlock()
		return ErrClientClosed
	}
	if !replay {
		h.stats.Snapshots.Add(1)
		if mk.resync {
			h.stats.countResync(ResyncCursor)
		}
		if s.marker != nil {
			// A bus gap while the snapshot was read: it is stale, and the
			// gap's snapshot replaces it (still plain if this is the first).
			s.marker.resync = s.marker.resync && mk.resync
		} else {
			s.first = snap
			s.skipReflected(snap.Seq)
		}
	}
	c.queueRawLocked(ack)
	s.held = false
	c.pendLocked(s)
	c.mu.Unlock()
	t.mu.Unlock()
	c.signal()
	return nil
}

// registerLocked adds a subscription to t, or returns nil when id is
// already subscribed. Lock should be held for t and c.
func (c *Client) registerLocked(t *topology, id string) (*subscription, error) {
	if c.closed {
		return nil, ErrClientClosed
	}
	if _, ok := c.subs[id]; ok {
		return nil, nil
	}
	h := c.hub
	if len(c.subs) >= h.cfg.MaxSubscriptions {
		return nil, fmt.Errorf("subscribe %q: %w (limit %d)", id, ErrTooManySubscriptions, h.cfg.MaxSubscriptions)
	}
	s := &subscription{client: c, topo: t, active: true, held: true, next: t.end}
	t.addSub(s)
	c.subs[id] = s
	return s, nil
}

// pendLocked marks s as having something to read. Lock should be held
// for c.
func (c *Client) pendLocked(s *subscription) {
	if !s.pending && !s.stalled && !s.held {
		s.pending = true
		c.pending = append(c.pending, s)
	}
}

// Unsubscribe ends the subscription to id, so nothing more of it is
// popped, and queues ack (if any). Unsubscribing a topology that is not
// subscribed queues only the ack.
func (c *Client) Unsubscribe(id string, ack []byte) {
	c.mu.Lock()
	s := c.subs[id]
	c.mu.Unlock()
	if s != nil {
		c.endSubscription(s)
	}
	if ack != nil {
		c.Send(ack)
	}
}

// endSubscription unregisters s from its topology.
//
// When it was the topology's last and was acknowledged, the topology keeps
// its history for HistoryAge, so that the subscriber can resume; a
// subscription that never was (not found, failed read) leaves nothing.
func (c *Client) endSubscription(s *subscription) {
	t := s.topo
	t.mu.Lock()
	c.mu.Lock()
	if s.active {
		s.active = false
		t.removeSub(s)
		if c.subs[t.id] == s {
			delete(c.subs, t.id)
		}
		s.marker, s.first = nil, nil
		if len(t.subs) == 0 && !s.held {
			t.idleSince = c.hub.cfg.Now()
		}
	}
	empty := len(t.subs) == 0 && t.hist.len() == 0 && t.idleSince.IsZero()
	c.mu.Unlock()
	t.mu.Unlock()
	if empty {
		c.hub.release(t)
	}
}

// Send queues a transport message (a reply or an error frame); replies
// are popped in the order they were sent, before the events popped with
// them.
func (c *Client) Send(raw []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.queueRawLocked(raw)
	c.mu.Unlock()
	c.signal()
}

// queueRawLocked queues a transport message. Replies are not bounded by
// QueueSize, so their bytes are: a client that keeps asking while it does
// not read is ended with DisconnectPolicy rather than growing without
// limit. Lock should be held.
func (c *Client) queueRawLocked(raw []byte) {
	if raw == nil {
		return
	}
	if c.rawBytes+len(raw) > c.hub.cfg.MaxReplyBytes {
		// Not Disconnect: it signals, and the caller signals after
		// unlocking anyway.
		c.doneOnce.Do(func() {
			c.reason.Store(int32(DisconnectPolicy))
			close(c.done)
		})
		return
	}
	c.rawBytes += len(raw)
	c.raws = append(c.raws, raw)
}

// wake marks s as having something to read and wakes the client's
// writer.
func (c *Client) wake(s *subscription) {
	c.mu.Lock()
	if s.active {
		c.pendLocked(s)
	}
	c.mu.Unlock()
	c.signal()
}

// resyncLocked replaces what s has not read yet by one resync snapshot
// reflecting seq (a snapshot not yet popped keeps its kind: a first
// snapshot that will now reflect more is still a first snapshot). Lock
// should be held for s's topology.
func (s *subscription) resyncLocked(seq uint64, stats *Stats, reason ResyncReason) {
	t := s.topo
	s.next = t.end
	switch {
	case s.marker != nil:
		s.marker.seq = max(s.marker.seq, seq)
	case s.first != nil:
		s.first = nil
		s.marker = &marker{seq: seq}
	default:
		s.marker = &marker{seq: seq, resync: true}
		stats.countResync(reason)
	}
}

// skipReflected moves the cursor past the logged events a snapshot
// already reflects (sequence up to seq), so they are not sent after it.
// Lock should be held for s's topology.
func (s *subscription) skipReflected(seq uint64) {
	t := s.topo
	for s.next = max(s.next, t.oldestPosition()); s.next < t.end && t.at(s.next).Seq <= seq; s.next++ {
	}
}

// maxSpare is the largest drained slice kept for reuse; a burst's larger
// one is left to the garbage collector so idle clients stay small.
const maxSpare = 1024

// Pop appends to out what the client should write now: the replies
// queued so far, then for each woken subscription its snapshot (read
// here when a resync needs one: the only wait, holding no lock) and the
// events of its topology's log after its cursor. Per topology the order
// is the log's, a snapshot first. A subscription that has fallen too far
// behind gets a resync snapshot instead of the events it missed.
//
// When a resync snapshot cannot be read, the rest is still returned with
// ErrSnapshotUnavailable; the subscription waits Config.SnapshotRetry and
// is then tried again (Ready fires).
func (c *Client) Pop(ctx context.Context, out []Item) ([]Item, error) {
	c.mu.Lock()
	for _, raw := range c.raws {
		out = append(out, Item{Raw: raw})
	}
	clear(c.raws)
	c.raws, c.rawBytes = c.raws[:0], 0
	if cap(c.raws) > maxSpare {
		c.raws = nil
	}
	batch := c.pending
	c.pending, c.spare = c.spare[:0], nil
	for _, s := range batch {
		s.pending = false
	}
	c.mu.Unlock()

	var failed error
	for _, s := range batch {
		var err error
		if out, err = c.read(ctx, s, out); err != nil {
			failed = err
		}
	}

	clear(batch)
	c.mu.Lock()
	if cap(batch) <= maxSpare && !c.closed && c.spare == nil {
		c.spare = batch[:0]
	}
	c.mu.Unlock()
	return out, failed
}

// read appends what s has to deliver now: its snapshot if one is due
// (read with no lock held), then the events of the log after its cursor.
func (c *Client) read(ctx context.Context, s *subscription, out []Item) ([]Item, error) {
	h := c.hub
	t := s.topo
	// Twice at most: a snapshot, then the events logged while it was read.
	for range 2 {
		t.mu.Lock()
		if !s.active {
			t.mu.Unlock()
			return out, nil
		}
		if s.marker == nil && s.next < t.end && t.behind(s.next, h.cfg.QueueSize, h.lagCutoff()) {
			s.resyncLocked(t.last, &h.stats, ResyncSlow)
			h.stats.Overflows.Add(1)
		}
		if s.first != nil {
			out = append(out, Item{Event: s.first})
			s.first = nil
		}
		mk := s.marker
		s.marker = nil
		if mk != nil {
			// The read starts now, so it reflects everything logged so
			// far: fold those events into it.
			mk.seq, s.next = max(mk.seq, t.last), t.end
		}
		if mk == nil {
			n := len(out)
			for ; s.next < t.end; s.next++ {
				out = append(out, Item{Event: t.at(s.next)})
			}
			h.stats.Delivered.Add(uint64(len(out) - n))
			if !s.waiting {
				s.waiting = true
				t.waiters = append(t.waiters, s)
			}
			t.mu.Unlock()
			return out, nil
		}
		t.mu.Unlock()

		ev, err := h.snapshotEvent(ctx, t.id, *mk)
		switch {
		case err == nil:
			out = append(out, Item{Event: ev})
			h.stats.Snapshots.Add(1)
			t.mu.Lock()
			s.skipReflected(ev.Seq)
			t.mu.Unlock()
			continue
		case errors.Is(err, ErrNotFound):
			c.endSubscription(s)
			return append(out, Item{Topology: t.id, Err: ErrNotFound}), nil
		}
		// Put the snapshot back, folding in whatever was logged meanwhile,
		// and retry it later.
		t.mu.Lock()
		if s.active {
			if s.marker == nil {
				s.marker = mk
			}
			s.marker.seq = max(s.marker.seq, mk.seq, t.last)
			s.marker.resync = s.marker.resync && mk.resync
			s.next = t.end
			c.mu.Lock()
			c.stallLocked(s)
			c.mu.Unlock()
		}
		t.mu.Unlock()
		return out, fmt.Errorf("%w: %s: %v", ErrSnapshotUnavailable, t.id, err)
	}
	// A gap arrived while the snapshot was read: come back for it.
	c.mu.Lock()
	c.pendLocked(s)
	c.mu.Unlock()
	c.signal()
	return out, nil
}

// stallLocked parks s until the retry timer. Lock should be held for c.
func (c *Client) stallLocked(s *subscription) {
	if s.stalled || c.closed {
		return
	}
	s.stalled = true
	c.stalled = append(c.stalled, s)
	if c.retry == nil {
		c.retry = time.AfterFunc(c.hub.cfg.SnapshotRetry, c.unstall)
	} else if len(c.stalled) == 1 {
		c.retry.Reset(c.hub.cfg.SnapshotRetry)
	}
}

// unstall re-pends the stalled subscriptions.
func (c *Client) unstall() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	for _, s := range c.stalled {
		s.stalled = false
		if s.active {
			c.pendLocked(s)
		}
	}
	clear(c.stalled)
	c.stalled = c.stalled[:0]
	c.mu.Unlock()
	c.signal()
}

// snapshotEvent reads (or shares) the topology's snapshot as an event
// for mk.
func (h *Hub) snapshotEvent(ctx context.Context, id string, mk marker) (*Event, error) {
	f, err := h.snapshots.read(ctx, id, mk.seq)
	if err != nil {
		return nil, err
	}
	return f.event(h, mk.resync), nil
}

// Close unregisters the client from every topology and from the hub. The
// transport calls it once it has stopped writing.
func (c *Client) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	subs := make([]*subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	if c.retry != nil {
		c.retry.Stop()
	}
	c.mu.Unlock()
	for _, s := range subs {
		c.endSubscription(s)
	}
	c.mu.Lock()
	c.raws, c.pending, c.spare, c.stalled = nil, nil, nil, nil
	c.mu.Unlock()
	h := c.hub
	h.clientsMu.Lock()
	delete(h.clients, c)
	h.clientsMu.Unlock()
	c.Disconnect(DisconnectNone)
}
