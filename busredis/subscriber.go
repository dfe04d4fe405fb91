package busredis

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
)

// A Sink receives what the subscription reads. *hub.Hub is one.
type Sink interface {
	// HandleMessage takes one bus message; its error (a dropped message)
	// is the sink's business and never stops the subscription.
	HandleMessage(channel string, body []byte) error
	// BusGap is called each time the subscription is (re)established:
	// events published while it was down were missed.
	BusGap()
}

var _ Sink = (*hub.Hub)(nil)

// SubscriberName is the CLIENT SETNAME of the subscription connection,
// so operators (and tests) can find it in CLIENT LIST.
const SubscriberName = "topohub-sub"

// SubscriberConfig configures a Subscriber.
type SubscriberConfig struct {
	// Families whose patterns are subscribed. Required.
	Families []hub.Family
	// ProbeInterval: when nothing arrives for this long, the connection is
	// pinged; when the ping is not answered within another interval, the
	// connection is dropped and re-established. Zero value means 5s.
	ProbeInterval time.Duration
	// MaxBackoff caps the wait between reconnect attempts. Zero value
	// means 2s.
	MaxBackoff time.Duration
	// Publisher, when set, publishes a lag probe every LagInterval on a
	// private channel of the first family through the ordinary client
	// (never the subscription's connection); the time until the
	// subscription reads it back is the bus lag (LastLag), which includes
	// any backlog ahead of it in Redis and in the hub. Zero value means no
	// probe.
	Publisher redis.Cmdable
	// LagInterval is the probe interval. Zero value means 2s.
	LagInterval time.Duration
	// Instance names this hub in its probe channel, so that hubs sharing a
	// Redis each read only their own probes. Zero value means a random id.
	Instance string
	// Logger. Zero value means slog.Default().
	Logger *slog.Logger
}

// A Subscriber holds ONE Redis connection with one PSUBSCRIBE per family,
// however many clients the hub has, and feeds every message to a Sink.
type Subscriber struct {
	opts  *redis.Options
	sink  Sink
	cfg   SubscriberConfig
	pats  []string
	ready atomic.Bool
	gaps  atomic.Uint64

	probeChannel string
	lag          atomic.Int64 // nanoseconds of the newest probe's round trip; -1 before one
	probes       atomic.Uint64
}

// NewSubscriber prepares a subscription; Run makes it.
func NewSubscriber(opts *redis.Options, sink Sink, cfg SubscriberConfig) *Subscriber {
	o := *opts
	o.ClientName = SubscriberName
	// RESP2: pub/sub messages are the same, and go-redis then skips its
	// RESP3 push-notification check before every message (a tenth of the
	// hub's CPU under a flood of 100,000 unroutable events/s).
	o.Protocol = 2
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LagInterval <= 0 {
		cfg.LagInterval = 2 * time.Second
	}
	if cfg.Instance == "" {
		cfg.Instance = newInstanceID()
	}
	s := &Subscriber{opts: &o, sink: sink, cfg: cfg}
	for _, f := range cfg.Families {
		s.pats = append(s.pats, f.Pattern())
	}
	if len(cfg.Families) > 0 {
		s.probeChannel = cfg.Families[0].Prefix + "." + ProbeToken + "." + cfg.Instance
	}
	s.lag.Store(-1)
	return s
}

// ProbeToken is the second token of lag probe channels
// (topology._topohub_probe.<instance>); no client can subscribe to it,
// since no topology of that id exists, and the subscriber keeps the
// probes from the hub.
const ProbeToken = "_topohub_probe"

// LastLag returns the round trip of the newest lag probe, and false
// before the first one came back.
func (s *Subscriber) LastLag() (time.Duration, bool) {
	n := s.lag.Load()
	return time.Duration(n), n >= 0
}

// Probes counts the lag probes read back.
func (s *Subscriber) Probes() uint64 { return s.probes.Load() }

// runProbes publishes a lag probe every interval until ctx ends.
func (s *Subscriber) runProbes(ctx context.Context) {
	tick := time.NewTicker(s.cfg.LagInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !s.ready.Load() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, s.cfg.LagInterval)
		err := s.cfg.Publisher.Publish(pctx, s.probeChannel, strconv.FormatInt(time.Now().UnixNano(), 10)).Err()
		cancel()
		if err != nil && ctx.Err() == nil {
			s.cfg.Logger.Debug("lag probe not published", "err", err)
		}
	}
}

// readProbe records a probe's round trip.
func (s *Subscriber) readProbe(body string) {
	sent, err := strconv.ParseInt(body, 10, 64)
	if err != nil {
		return
	}
	s.lag.Store(max(0, time.Now().UnixNano()-sent))
	s.probes.Add(1)
}

// Ready reports whether every pattern subscription is established.
func (s *Subscriber) Ready() bool { return s.ready.Load() }

// Patterns returns the subscribed patterns.
func (s *Subscriber) Patterns() []string { return s.pats }

// Run holds the subscription until ctx ends, re-establishing it whenever
// it drops. Each time all patterns are confirmed the sink is told of the
// gap, so every client is resynced.
func (s *Subscriber) Run(ctx context.Context) {
	rdb := redis.NewClient(s.opts)
	defer rdb.Close()
	log := s.cfg.Logger
	if s.cfg.Publisher != nil && s.probeChannel != "" {
		var wg sync.WaitGroup
		defer wg.Wait()
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wg.Go(func() { s.runProbes(pctx) })
	}

	var mu sync.Mutex // guards ps, which a reconnect replaces
	ps := rdb.PSubscribe(ctx, s.pats...)
	// A blocked read does not watch ctx: closing the connection ends it.
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		ps.Close()
	})
	defer func() {
		stop()
		mu.Lock()
		defer mu.Unlock()
		ps.Close()
	}()

	backoff := 50 * time.Millisecond
	pingOut := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.cfg.ProbeInterval)
		if ctx.Err() != nil {
			s.ready.Store(false)
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && s.ready.Load() {
				if !pingOut {
					pingOut = true
					if err := ps.Ping(ctx); err == nil {
						continue
					}
				}
				// The ping went unanswered: the connection is silently
				// dead (a failover can leave it so while Redis itself
				// answers health checks). Start afresh.
				log.Warn("redis subscription unresponsive; reconnecting")
				mu.Lock()
				ps.Close()
				ps = rdb.PSubscribe(ctx, s.pats...)
				mu.Unlock()
			}
			pingOut = false
			if s.ready.Swap(false) {
				log.Warn("redis subscription lost", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, s.cfg.MaxBackoff)
			continue
		}
		pingOut = false
		switch m := msg.(type) {
		case *redis.Message:
			if m.Channel == s.probeChannel {
				s.readProbe(m.Payload)
				continue
			}
			_ = s.sink.HandleMessage(m.Channel, []byte(m.Payload))
		case *redis.Subscription:
			if m.Kind == "psubscribe" && m.Count == len(s.pats) && !s.ready.Load() {
				backoff = 50 * time.Millisecond
				s.sink.BusGap()
				s.gaps.Add(1)
				s.ready.Store(true)
				log.Info("redis subscription established", "patterns", s.pats)
			}
		case *redis.Pong:
		}
	}
}

// Established counts how many times the subscription was established.
func (s *Subscriber) Established() uint64 { return s.gaps.Load() }
