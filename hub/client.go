package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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

// ErrSnapshotUnavailable is returned by Pop when a snapshot could not be
// read for a reason other than ErrNotFound. The snapshot is queued again;
// the transport should wait a little before the next Pop.
var ErrSnapshotUnavailable = errors.New("snapshot unavailable")

// A Client is one connection's view of the hub, whatever its transport:
// its subscriptions and one FIFO queue of everything to write to it.
// The bus reader appends to the queue and never waits for the client; the
// transport's writer drains it with Pop when Ready fires.
type Client struct {
	hub  *Hub
	user string

	ready chan struct{} // capacity 1: "the queue may be non-empty"

	doneOnce sync.Once
	done     chan struct{}
	reason   DisconnectReason // written before done is closed

	tokenID atomic.Pointer[string]

	mu       sync.Mutex
	closed   bool
	subs     map[string]*subscription
	queue    []item
	spare    []item
	rawBytes int // bytes of the transport messages in queue
}

// subscription is one client's interest in one topology. Guarded by the
// client's mu, except index, which the topology's mu guards.
type subscription struct {
	client *Client
	topo   *topology
	index  int
	active bool
	queued int     // events of this subscription in the client's queue
	marker *marker // the snapshot queued and not yet popped, if any
}

// marker is a snapshot to read when the writer reaches it.
type marker struct {
	seq    uint64 // the newest event the snapshot will reflect
	resync bool
}

// item is one queue entry: exactly one of ev, mk, raw is set.
type item struct {
	sub *subscription
	ev  *Event
	mk  *marker
	raw []byte
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

// Ready fires when the queue may hold something for Pop.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Done is closed when the hub ends the client; Reason says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Reason says why Done was closed.
func (c *Client) Reason() DisconnectReason {
	select {
	case <-c.done:
		return c.reason
	default:
		return DisconnectNone
	}
}

// Disconnect ends the client for reason; its transport sees Done and
// closes. Later calls do nothing.
func (c *Client) Disconnect(reason DisconnectReason) {
	c.doneOnce.Do(func() {
		c.reason = reason
		close(c.done)
	})
}

func (c *Client) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Queued returns how many entries wait in the client's queue for its
// writer: at most QueueSize events per subscription, plus a snapshot each
// and pending replies.
func (c *Client) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Subscriptions returns how many topologies the client is subscribed to.
func (c *Client) Subscriptions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.subs)
}

// Subscribe registers the client for topology id, then queues ack (if
// any) and, after it, either the snapshot or the events after since.
//
// The subscription is registered before the snapshot is read (the writer
// reads it when it reaches it in the queue), so an event published after
// Subscribe returns is never lost. With a since cursor that the history
// still covers, exactly the events after it are queued and no snapshot;
// otherwise a snapshot with "resync":true. Subscribing again to a
// subscribed topology queues only the ack.
//
// Existence is not checked here: callers check it with the snapshot
// source first, and a topology gone by the time the snapshot is read is
// reported by Pop.
func (c *Client) Subscribe(id, since string, ack []byte) error {
	if err := ValidateTopologyID(id); err != nil {
		return err
	}
	h := c.hub
	t := h.lockTopic(id)
	c.mu.Lock()
	err := c.subscribeLocked(t, id, since, ack)
	c.mu.Unlock()
	t.mu.Unlock()
	if err == nil {
		c.signal()
	}
	return err
}

// subscribeLocked does Subscribe's work. Lock should be held for both t
// and c.
func (c *Client) subscribeLocked(t *topology, id, since string, ack []byte) error {
	if c.closed {
		return ErrClientClosed
	}
	if _, ok := c.subs[id]; ok {
		c.queueRawLocked(ack)
		return nil
	}
	h := c.hub
	if len(c.subs) >= h.cfg.MaxSubscriptions {
		return fmt.Errorf("subscribe %q: %w (limit %d)", id, ErrTooManySubscriptions, h.cfg.MaxSubscriptions)
	}
	s := &subscription{client: c, topo: t, active: true}
	t.addSub(s)
	c.subs[id] = s
	c.queueRawLocked(ack)
	if since == "" {
		c.queueMarkerLocked(s, t.last, false)
		return nil
	}
	if epoch, seq, ok := ParseCursor(since); ok && epoch == h.epoch {
		t.expire(h.cfg.Now().Add(-h.cfg.HistoryAge))
		if evs, ok := t.since(seq, h.seq.Load()); ok && len(evs) <= h.cfg.QueueSize {
			for _, ev := range evs {
				c.queue = append(c.queue, item{sub: s, ev: ev})
			}
			s.queued = len(evs)
			return nil
		}
	}
	c.queueMarkerLocked(s, t.last, true)
	h.stats.Resyncs.Add(1)
	return nil
}

// queueMarkerLocked queues a snapshot for s reflecting seq, or moves the
// one already queued up to seq. Lock should be held.
func (c *Client) queueMarkerLocked(s *subscription, seq uint64, resync bool) {
	if s.marker == nil {
		s.marker = &marker{resync: resync}
		c.queue = append(c.queue, item{sub: s, mk: s.marker})
	}
	s.marker.seq = seq
}

// Unsubscribe ends the subscription to id, drops what is queued for it and
// queues ack (if any) after everything already popped. Unsubscribing a
// topology that is not subscribed queues only the ack.
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

// endSubscription unregisters s from its topology and drops its queue
// entries.
func (c *Client) endSubscription(s *subscription) {
	s.topo.mu.Lock()
	c.mu.Lock()
	if s.active {
		s.active = false
		s.topo.removeSub(s)
		if c.subs[s.topo.id] == s {
			delete(c.subs, s.topo.id)
		}
		c.removeQueuedLocked(s)
		s.queued, s.marker = 0, nil
	}
	c.mu.Unlock()
	s.topo.mu.Unlock()
}

// Send queues a transport message (a reply or an error frame) after
// everything queued so far.
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
		c.Disconnect(DisconnectPolicy)
		return
	}
	c.rawBytes += len(raw)
	c.queue = append(c.queue, item{raw: raw})
}

// enqueue queues ev for s; on overflow of s's share of the queue the
// queued events of s are replaced by one resync snapshot. Called by
// Publish with s's topology locked; never blocks on the transport.
func (c *Client) enqueue(s *subscription, ev *Event) {
	c.mu.Lock()
	if !s.active {
		c.mu.Unlock()
		return
	}
	if s.queued >= c.hub.cfg.QueueSize {
		c.resyncLocked(s, ev.Seq)
	} else {
		c.queue = append(c.queue, item{sub: s, ev: ev})
		s.queued++
	}
	c.mu.Unlock()
	c.signal()
}

// resync replaces what is queued for s by one resync snapshot reflecting
// seq. Lock should be held for s's topology.
func (c *Client) resync(s *subscription, seq uint64) {
	c.mu.Lock()
	if s.active {
		c.resyncLocked(s, seq)
	}
	c.mu.Unlock()
	c.signal()
}

// resyncLocked: lock should be held for c and s's topology.
func (c *Client) resyncLocked(s *subscription, seq uint64) {
	c.removeQueuedEventsLocked(s)
	// A snapshot still queued and never sent keeps its kind: a first
	// snapshot that will now reflect more is still a first snapshot.
	c.queueMarkerLocked(s, seq, true)
	c.hub.stats.Resyncs.Add(1)
}

// removeQueuedEventsLocked drops the queued events of s, keeping its
// marker. Lock should be held.
func (c *Client) removeQueuedEventsLocked(s *subscription) {
	q := c.queue[:0]
	for _, it := range c.queue {
		if it.sub == s && it.ev != nil {
			continue
		}
		q = append(q, it)
	}
	clear(c.queue[len(q):])
	c.queue = q
	s.queued = 0
}

// removeQueuedLocked drops every queue entry of s. Lock should be held.
func (c *Client) removeQueuedLocked(s *subscription) {
	q := c.queue[:0]
	for _, it := range c.queue {
		if it.sub == s {
			continue
		}
		q = append(q, it)
	}
	clear(c.queue[len(q):])
	c.queue = q
}

// maxSpare is the largest drained queue kept for reuse; a burst's larger
// buffer is left to the garbage collector so idle clients stay small.
const maxSpare = 1024

// Pop drains the queue into out, reading the snapshots it reaches (that
// read is the only wait, and it holds no lock). Order is kept per
// topology: a snapshot comes before the events queued after it. When a
// snapshot cannot be read, the items before it are returned with
// ErrSnapshotUnavailable and the snapshot stays queued.
func (c *Client) Pop(ctx context.Context, out []Item) ([]Item, error) {
	c.mu.Lock()
	batch := c.queue
	c.queue = c.spare[:0]
	c.spare = nil
	for _, it := range batch {
		c.rawBytes -= len(it.raw)
		if it.ev != nil {
			it.sub.queued--
		}
		if it.mk != nil && it.sub.marker == it.mk {
			it.sub.marker = nil
		}
	}
	c.mu.Unlock()

	var failed error
	var stalled map[*subscription]*marker // snapshots that could not be read
	var gone map[*subscription]bool       // subscriptions ended: topology not found
	for _, it := range batch {
		if gone[it.sub] {
			continue
		}
		if mk := stalled[it.sub]; mk != nil {
			// After a snapshot that could not be read, the topology's
			// events are folded into it: it will reflect them.
			if it.ev != nil {
				mk.seq = max(mk.seq, it.ev.Seq)
			}
			continue
		}
		switch {
		case it.raw != nil:
			out = append(out, Item{Raw: it.raw})
		case it.ev != nil:
			out = append(out, Item{Event: it.ev})
		case it.mk != nil:
			ev, err := c.hub.snapshotEvent(ctx, it.sub.topo.id, *it.mk)
			switch {
			case err == nil:
				out = append(out, Item{Event: ev})
			case errors.Is(err, ErrNotFound):
				c.endSubscription(it.sub)
				if gone == nil {
					gone = map[*subscription]bool{}
				}
				gone[it.sub] = true
				out = append(out, Item{Topology: it.sub.topo.id, Err: ErrNotFound})
			default:
				failed = fmt.Errorf("%w: %s: %v", ErrSnapshotUnavailable, it.sub.topo.id, err)
				if stalled == nil {
					stalled = map[*subscription]*marker{}
				}
				stalled[it.sub] = &marker{seq: it.mk.seq, resync: it.mk.resync}
			}
		}
	}
	if stalled != nil {
		c.requeueSnapshots(stalled)
	}

	clear(batch)
	c.mu.Lock()
	if cap(batch) <= maxSpare && !c.closed {
		c.spare = batch[:0]
	}
	pending := len(c.queue) > 0
	c.mu.Unlock()
	if pending {
		c.signal()
	}
	return out, failed
}

// requeueSnapshots puts snapshots that could not be read back at the head
// of the queue, before any event of their topology queued since.
func (c *Client) requeueSnapshots(stalled map[*subscription]*marker) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var head []item
	for s, mk := range stalled {
		if !s.active {
			continue
		}
		if s.marker != nil {
			// A resync queued meanwhile already stands before every
			// event of s that is still queued.
			s.marker.seq = max(s.marker.seq, mk.seq)
			if !mk.resync {
				s.marker.resync = false // still the first snapshot
			}
			continue
		}
		s.marker = mk
		head = append(head, item{sub: s, mk: mk})
	}
	c.queue = append(head, c.queue...)
}

// snapshotEvent reads the topology's snapshot as an event for mk.
func (h *Hub) snapshotEvent(ctx context.Context, id string, mk marker) (*Event, error) {
	snap, err := h.snapshots.read(ctx, id, mk.seq)
	if err != nil {
		return nil, err
	}
	snap.TopologyID = id
	return &Event{
		Topology: id,
		Name:     EventSnapshot,
		Seq:      mk.seq,
		Cursor:   h.cursor(mk.seq),
		Data:     EncodeSnapshot(snap, mk.resync),
	}, nil
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
	c.mu.Unlock()
	for _, s := range subs {
		c.endSubscription(s)
	}
	c.mu.Lock()
	c.queue, c.spare = nil, nil
	c.mu.Unlock()
	h := c.hub
	h.clientsMu.Lock()
	delete(h.clients, c)
	h.clientsMu.Unlock()
	c.Disconnect(DisconnectNone)
}
