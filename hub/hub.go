package hub

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Config configures a Hub. The zero value of every field but Snapshots
// means the default written beside it.
type Config struct {
	// Families routed to topologies. Zero value means DefaultFamilies().
	Families []Family
	// Snapshots answers existence and snapshot reads. Required.
	Snapshots SnapshotSource
	// QueueSize bounds how far (in events) a subscriber may fall behind
	// its topology's log; further behind, the events it missed are
	// replaced by one resync snapshot. Zero value means 256.
	QueueSize int
	// MaxLag bounds how long ago the next event a subscriber is given may
	// have been received; an older one is replaced, with everything after
	// it, by one resync snapshot, so an overloaded hub stays current
	// rather than lagging without bound. Zero value means 1s; negative
	// means no age bound.
	MaxLag time.Duration
	// SnapshotRetry is how long a subscription waits before reading a
	// resync snapshot again after the source failed. Zero value means 1s.
	SnapshotRetry time.Duration
	// SnapshotReuse is how long a finished snapshot read is shared with
	// later subscribers of the topology, as long as no event of it has
	// arrived since the read began (an event always forces a new read).
	// It bounds how long a change that is never published, such as a
	// topology deleted without an event, can go unseen by a new
	// subscriber. Zero value means 1s; negative means never.
	SnapshotReuse time.Duration
	// MaxSubscriptions bounds the topologies one client may subscribe to.
	// Zero value means 100.
	MaxSubscriptions int
	// HistorySize is how many recent events per topology are kept for
	// resume. Zero value means 512.
	HistorySize int
	// HistoryAge is how long an event is kept for resume. Zero value means
	// 5 minutes.
	HistoryAge time.Duration
	// HistoryBytes bounds the data bytes of one topology's history (its
	// cached SSE and WebSocket frames take about as much again, twice);
	// the oldest events go first, the newest always stays. Zero value
	// means 8 MiB; it is lowered to MaxHistoryBytes when that is smaller.
	HistoryBytes int
	// MaxHistoryBytes bounds the data bytes of all histories together:
	// over it, the histories of the topologies with the oldest newest
	// event are dropped whole (never the one just published to) until an
	// eighth of it is free again. Readers that still needed a dropped
	// event resync. Zero value means 128 MiB.
	MaxHistoryBytes int
	// MaxTopologies bounds the topologies the hub keeps state for:
	// creating one over it forgets those with no subscriber (the longest
	// unwatched first) until an eighth of it is free again. Topologies
	// with subscribers are never forgotten; their number is bounded by
	// clients times MaxSubscriptions. Zero value means 100,000.
	MaxTopologies int
	// MaxReplyBytes bounds the transport messages (acks, pongs, errors)
	// queued for one client and not yet written; a client over it is ended
	// with DisconnectPolicy. Zero value means 256 KiB.
	MaxReplyBytes int
	// MaxBodySize is the largest bus message accepted. Zero value means 1 MiB.
	MaxBodySize int
	// Logger receives structured logs. Zero value means slog.Default().
	Logger *slog.Logger
	// Now returns the current time. Zero value means time.Now.
	Now func() time.Time
}

// Errors a caller branches on.
var (
	ErrTooManySubscriptions = errors.New("too many subscriptions")
	ErrClientClosed         = errors.New("client closed")
)

const numShards = 32

// Hub routes decoded bus events to the clients subscribed to their
// topology. Delivery takes only the lock of that one topology and each
// subscriber's own queue lock, never a global lock, and never blocks on a
// client: a full queue is replaced by a resync snapshot.
type Hub struct {
	cfg      Config
	decoder  *Decoder
	log      *slog.Logger
	logDrops rate.Sometimes
	logCaps  rate.Sometimes
	// trimming is set while a trim for MaxHistoryBytes or MaxTopologies
	// runs; one at a time is enough.
	trimming atomic.Bool

	epoch    int64
	epochStr string
	seq      atomic.Uint64 // last sequence handed out

	seed   maphash.Seed
	shards [numShards]shard

	snapshots snapshotReads

	clientsMu sync.Mutex
	clients   map[*Client]struct{}

	stats Stats
}

type shard struct {
	mu         sync.Mutex
	topologies map[string]*topology
}

// New builds a hub. It fails when no snapshot source is given.
func New(cfg Config) (*Hub, error) {
	if cfg.Snapshots == nil {
		return nil, errors.New("hub: Config.Snapshots is required")
	}
	if cfg.Families == nil {
		cfg.Families = DefaultFamilies()
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 256
	}
	if cfg.MaxSubscriptions <= 0 {
		cfg.MaxSubscriptions = 100
	}
	if cfg.HistorySize <= 0 {
		cfg.HistorySize = 512
	}
	if cfg.MaxLag == 0 {
		cfg.MaxLag = time.Second
	}
	if cfg.SnapshotRetry <= 0 {
		cfg.SnapshotRetry = time.Second
	}
	if cfg.SnapshotReuse == 0 {
		cfg.SnapshotReuse = time.Second
	}
	if cfg.MaxReplyBytes <= 0 {
		cfg.MaxReplyBytes = 256 << 10
	}
	if cfg.HistoryBytes <= 0 {
		cfg.HistoryBytes = 8 << 20
	}
	if cfg.MaxHistoryBytes <= 0 {
		cfg.MaxHistoryBytes = 128 << 20
	}
	cfg.HistoryBytes = min(cfg.HistoryBytes, cfg.MaxHistoryBytes)
	if cfg.MaxTopologies <= 0 {
		cfg.MaxTopologies = 100_000
	}
	if cfg.HistoryAge <= 0 {
		cfg.HistoryAge = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Hub{
		cfg:      cfg,
		decoder:  NewDecoder(cfg.Families, cfg.MaxBodySize),
		log:      cfg.Logger,
		logDrops: rate.Sometimes{First: 5, Interval: 10 * time.Second},
		logCaps:  rate.Sometimes{First: 5, Interval: 10 * time.Second},
		epoch:    cfg.Now().UnixMilli(),
		seed:     maphash.MakeSeed(),
		clients:  map[*Client]struct{}{},
	}
	h.epochStr = strconv.FormatInt(h.epoch, 10)
	h.snapshots = snapshotReads{src: cfg.Snapshots, seq: &h.seq, stats: &h.stats, reuse: max(cfg.SnapshotReuse, 0), now: cfg.Now, flights: map[string]*snapshotFlight{}}
	for i := range h.shards {
		h.shards[i].topologies = map[string]*topology{}
	}
	return h, nil
}

// Families returns the families the hub routes; busredis subscribes to
// their patterns.
func (h *Hub) Families() []Family { return h.cfg.Families }

// Snapshots returns the hub's snapshot source.
func (h *Hub) Snapshots() SnapshotSource { return h.cfg.Snapshots }

// Epoch is the first half of every cursor this hub process hands out.
func (h *Hub) Epoch() int64 { return h.epoch }

// Stats returns the hub's counters.
func (h *Hub) Stats() *Stats { return &h.stats }

// Clients returns the number of open clients.
func (h *Hub) Clients() int {
	h.clientsMu.Lock()
	defer h.clientsMu.Unlock()
	return len(h.clients)
}

func (h *Hub) shardFor(id string) *shard {
	return &h.shards[maphash.String(h.seed, id)%numShards]
}

// topologyFor returns the state of topology id, creating it. The
// returned state may be evicted concurrently: callers lock it and check
// dead, retrying on a dead one.
func (h *Hub) topologyFor(id string) *topology {
	sh := h.shardFor(id)
	sh.mu.Lock()
	t := sh.topologies[id]
	created := t == nil
	if created {
		// Its last is the hub's sequence now: a snapshot for its first
		// subscriber must reflect every event received so far, recorded or
		// not.
		t = newTopology(id, h.seq.Load(), h.cfg.HistorySize, h.cfg.HistoryBytes, &h.stats.HistoryBytes)
		sh.topologies[id] = t
	}
	sh.mu.Unlock()
	if created && h.stats.Topologies.Add(1) > int64(h.cfg.MaxTopologies) {
		h.trimTopologies()
	}
	return t
}

// findTopology returns the live state of topology id, locked, or nil when
// the hub keeps none.
func (h *Hub) findTopology(id string) *topology {
	sh := h.shardFor(id)
	for {
		sh.mu.Lock()
		t := sh.topologies[id]
		sh.mu.Unlock()
		if t == nil {
			return nil
		}
		t.mu.Lock()
		if !t.dead {
			return t
		}
		t.mu.Unlock()
	}
}

// forgetLocked removes t from its shard. Lock should be held for the
// shard and t.
func (h *Hub) forgetLocked(sh *shard, t *topology) {
	t.drop()
	t.dead = true
	delete(sh.topologies, t.id)
	h.stats.Topologies.Add(-1)
}

// release forgets t if nothing is left of it: no subscriber, no history,
// and no ended subscription that might resume. Subscribes that failed
// (not found, over the limit) leave nothing behind this way.
func (h *Hub) release(t *topology) {
	sh := h.shardFor(t.id)
	sh.mu.Lock()
	t.mu.Lock()
	if !t.dead && sh.topologies[t.id] == t && len(t.subs) == 0 && t.hist.len() == 0 && t.idleSince.IsZero() {
		h.forgetLocked(sh, t)
	}
	t.mu.Unlock()
	sh.mu.Unlock()
}

// lockTopology returns the live state of topology id, locked.
func (h *Hub) lockTopology(id string) *topology {
	for {
		t := h.topologyFor(id)
		t.mu.Lock()
		if !t.dead {
			return t
		}
		t.mu.Unlock()
	}
}

// lagCutoff is the receive time before which an undelivered event is too
// old to deliver (zero: no age bound).
func (h *Hub) lagCutoff() time.Time {
	if h.cfg.MaxLag < 0 {
		return time.Time{}
	}
	return h.cfg.Now().Add(-h.cfg.MaxLag)
}

func (h *Hub) cursor(seq uint64) string {
	b := make([]byte, 0, len(h.epochStr)+21)
	b = append(b, h.epochStr...)
	b = append(b, '-')
	b = strconv.AppendUint(b, seq, 10)
	return string(b)
}

// HandleMessage decodes one bus message and publishes it. A message that
// cannot reach a client is counted, logged (rate-limited) and returned as
// a *DropError; it never disturbs the hub.
func (h *Hub) HandleMessage(channel string, body []byte) error {
	h.stats.Received.Add(1)
	ev, err := h.decoder.decode(channel, body, h.cfg.Now)
	if err != nil {
		var de *DropError
		if errors.As(err, &de) {
			h.stats.Dropped[de.Reason].Add(1)
			if de.Reason != DropUnrouted {
				h.logDrops.Do(func() {
					h.log.Warn("bus message dropped", "reason", de.Reason.String(), "channel", de.Channel, "detail", de.Detail, "bytes", len(body))
				})
			}
		}
		return err
	}
	h.Publish(ev)
	return nil
}

// Publish assigns the event its cursor and appends it to the topology's
// log, then wakes the subscribers that had read everything before it.
// Its cost does not grow with subscribers that are still reading: they
// find the event in the log at their own pace, so the bus reader never
// waits for delivery.
//
// An event of a topology that has no subscriber, and had none within
// HistoryAge, is not kept: the hub holds no state for topologies nobody
// watches, however many a producer publishes to.
func (h *Hub) Publish(ev *Event) {
	if ev.received.IsZero() {
		ev.received = h.cfg.Now()
	}
	h.stats.Published.Add(1)
	t := h.findTopology(ev.Topology)
	if t == nil {
		// The sequence moves before the second look, so a state created
		// after it counts this event as received (see topologyFor).
		h.seq.Add(1)
		if t = h.findTopology(ev.Topology); t == nil {
			h.stats.Unwatched.Add(1)
			return
		}
	}
	seq := h.seq.Add(1)
	if !t.keepsHistory(ev.received, h.cfg.HistoryAge) {
		t.skip(seq)
		t.mu.Unlock()
		h.stats.Unwatched.Add(1)
		return
	}
	ev.Seq = seq
	ev.Cursor = h.cursor(seq)
	t.record(ev)
	waiters := t.takeWaiters()
	t.mu.Unlock()
	if h.stats.HistoryBytes.Load() > int64(h.cfg.MaxHistoryBytes) {
		h.trimHistory(t)
	}
	if len(waiters) == 0 {
		t.mu.Lock()
		t.returnWaiters(waiters)
		t.mu.Unlock()
		return
	}
	// Woken outside the topology's lock, so that readers of the log are
	// not held up meanwhile; pending marks are idempotent.
	for _, s := range waiters {
		s.client.wake(s)
	}
	t.mu.Lock()
	t.returnWaiters(waiters)
	t.mu.Unlock()
}

// BusGap tells the hub that the bus subscription was lost and is back:
// events may have been missed. Every topology's history is cut (a cursor
// from before the gap can no longer be replayed) and every subscription
// of every client is queued a resync snapshot.
func (h *Hub) BusGap() {
	h.stats.BusGaps.Add(1)
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		topologies := make([]*topology, 0, len(sh.topologies))
		for _, t := range sh.topologies {
			topologies = append(topologies, t)
		}
		sh.mu.Unlock()
		for _, t := range topologies {
			t.mu.Lock()
			if !t.dead {
				gap := h.seq.Add(1)
				t.cut(gap)
				for _, s := range t.subs {
					s.resyncLocked(gap, &h.stats, ResyncBusGap)
					s.client.wake(s)
				}
			}
			t.mu.Unlock()
		}
	}
}

// Sweep drops history older than HistoryAge and forgets topologies with
// no subscriber and no history left. Run calls it periodically.
func (h *Hub) Sweep() {
	h.snapshots.expire()
	now := h.cfg.Now()
	cutoff := now.Add(-h.cfg.HistoryAge)
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, t := range sh.topologies {
			t.mu.Lock()
			t.expire(cutoff)
			if t.hist.len() == 0 && !t.keepsHistory(now, h.cfg.HistoryAge) {
				h.forgetLocked(sh, t)
			}
			t.mu.Unlock()
		}
		sh.mu.Unlock()
	}
}

// Run sweeps the history every interval until ctx ends.
func (h *Hub) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			h.Sweep()
		}
	}
}

// Shutdown ends every client with reason; their transports see Done.
func (h *Hub) Shutdown(reason DisconnectReason) {
	h.ForEachClient(func(c *Client) { c.Disconnect(reason) })
}

// ForEachClient calls fn for every open client, holding no hub lock; used
// to end the connections of a revoked token.
func (h *Hub) ForEachClient(fn func(*Client)) {
	h.clientsMu.Lock()
	cs := make([]*Client, 0, len(h.clients))
	for c := range h.clients {
		cs = append(cs, c)
	}
	h.clientsMu.Unlock()
	for _, c := range cs {
		fn(c)
	}
}

// Stats are the hub's counters, read by the metrics handler.
type Stats struct {
	Received  atomic.Uint64 // bus messages handed to the hub
	Published atomic.Uint64 // events routed to a topology (kept in its log, or counted in Unwatched)
	Delivered atomic.Uint64 // events handed to client transports
	Snapshots atomic.Uint64 // snapshots handed to client transports
	Resyncs   atomic.Uint64 // resync snapshots queued (overflow, lag, gap or stale cursor)
	// ResyncsBy splits Resyncs by ResyncReason.
	ResyncsBy [numResyncReasons]atomic.Uint64
	Overflows atomic.Uint64 // subscribers found too far behind the log
	BusGaps   atomic.Uint64 // bus subscription gaps

	Unwatched atomic.Uint64 // events of topologies nobody watches, not kept

	Topologies     atomic.Int64  // topologies the hub keeps state for
	HistoryBytes   atomic.Int64  // data bytes of all histories
	HistoryDrops   atomic.Uint64 // histories dropped for MaxHistoryBytes
	TopologyDrops  atomic.Uint64 // unwatched topologies forgotten for MaxTopologies
	TopologiesOver atomic.Uint64 // trims that left more than MaxTopologies (all watched)

	SnapshotReads   atomic.Uint64 // snapshot reads from the source
	SnapshotsShared atomic.Uint64 // snapshots served by a read already under way
	Dropped         [numDropReasons]atomic.Uint64
}

// A ResyncReason says why a subscription was sent a resync snapshot.
type ResyncReason int

const (
	// ResyncSlow: the subscription fell too far behind its topology's log
	// (QueueSize events, MaxLag, or events already gone from the history).
	ResyncSlow ResyncReason = iota
	// ResyncBusGap: the bus subscription was lost and re-established.
	ResyncBusGap
	// ResyncCursor: a resume cursor the hub could not honour (another
	// epoch, malformed, too old, from before a gap).
	ResyncCursor
	numResyncReasons
)

func (r ResyncReason) String() string {
	switch r {
	case ResyncSlow:
		return "slow"
	case ResyncBusGap:
		return "bus_gap"
	case ResyncCursor:
		return "cursor"
	}
	return "unknown"
}

// ResyncReasons lists every ResyncReason, for metrics.
func ResyncReasons() []ResyncReason { return []ResyncReason{ResyncSlow, ResyncBusGap, ResyncCursor} }

// countResync counts one resync snapshot queued for reason r.
func (s *Stats) countResync(r ResyncReason) {
	s.Resyncs.Add(1)
	s.ResyncsBy[r].Add(1)
}
