package busredis

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

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
	// ProbeInterval, without a Publisher: when nothing arrives for this
	// long, the connection is pinged; when the ping is not answered within
	// another interval, the connection is dropped and re-established. With
	// a Publisher the end-to-end probe (LagInterval, ProbeDeadline) judges
	// the subscription instead, and ProbeInterval is unused. Zero value
	// means 5s.
	ProbeInterval time.Duration
	// MaxBackoff caps the wait between reconnect attempts, and so bounds
	// how long after Redis is back the subscription is (the attempt itself
	// aside). Zero value means 500ms.
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
	// ProbeDeadline: with a Publisher, when no probe has been read back
	// for this long, measured from the time the newest one read back was
	// due (or from when the subscription was established), the bus is
	// marked down at once (Ready false) and the subscription is torn down
	// and made afresh. A fault is so detected within ProbeDeadline of its
	// start, whether the publish or the delivery hangs. Zero value means
	// 2 LagIntervals; it is raised to at least 1.5 LagIntervals, so that a
	// healthy bus always has a probe in flight that can still make it.
	ProbeDeadline time.Duration
	// Instance names this hub in its probe channel, so that hubs sharing a
	// Redis each read only their own probes. Zero value means a random id.
	Instance string
	// Logger. Zero value means slog.Default().
	Logger *slog.Logger
	// FailureLogInterval: while the subscription cannot be made, the
	// reason is logged at once and then at most once per interval. Zero
	// value means 5s.
	FailureLogInterval time.Duration
	// TracerProvider makes a span per (re)subscription, from the attempt
	// to the confirmation of every pattern. Zero value means otel's
	// global provider.
	TracerProvider trace.TracerProvider
}

// A Subscriber holds ONE Redis connection with one PSUBSCRIBE per family,
// however many clients the hub has, and feeds every message to a Sink.
type Subscriber struct {
	target *Target // the subscription's own copy: name, RESP2, timeouts
	sink   Sink
	cfg    SubscriberConfig
	pats   []string
	ready  atomic.Bool
	gaps   atomic.Uint64
	downs  atomic.Uint64 // times Ready went from true to false
	// lastDown is the UnixNano of the newest such change.
	lastDown atomic.Int64

	probeChannel string
	probePrefix  string       // of every hub's probe channels
	lag          atomic.Int64 // nanoseconds of the newest probe's round trip; -1 before one
	probes       atomic.Uint64
	// seen is the UnixNano at which the newest probe read back was due,
	// or at which the subscription was established if later: the probe
	// deadline runs from it.
	seen   atomic.Int64
	missed atomic.Uint64 // probe deadlines missed

	src atomic.Pointer[subSource] // while Run runs

	mu     sync.Mutex    // guards ps, which a reconnect replaces
	ps     *redis.PubSub // the current subscription; nil outside Run
	kicked atomic.Bool   // the probe tore ps down: Run makes a new one
}

// NewSubscriber prepares a subscription on one server; Run makes it.
func NewSubscriber(opts *redis.Options, sink Sink, cfg SubscriberConfig) *Subscriber {
	return NewTargetSubscriber(SingleTarget(opts), sink, cfg)
}

// NewTargetSubscriber prepares a subscription on any shape of Redis; Run
// makes it. On Sentinel each (re)connect asks the sentinels for the
// current primary; on Cluster the subscription is held on one primary,
// and moves to another whenever it has to be made again.
func NewTargetSubscriber(t *Target, sink Sink, cfg SubscriberConfig) *Subscriber {
	tg := &Target{Shape: t.Shape}
	var dial, read, write *time.Duration
	switch t.Shape {
	case ShapeSentinel:
		o := *t.Sentinel
		o.SentinelAddrs = append([]string(nil), o.SentinelAddrs...)
		o.ClientName, o.Protocol = SubscriberName, 2
		tg.Sentinel = &o
		dial, read, write = &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout
	case ShapeCluster:
		o := *t.Cluster
		o.Addrs = append([]string(nil), o.Addrs...)
		o.ClientName, o.Protocol = SubscriberName, 2
		tg.Cluster = &o
		dial, read, write = &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout
	default:
		o := *t.Single
		// RESP2: pub/sub messages are the same, and go-redis then skips its
		// RESP3 push-notification check before every message (a tenth of the
		// hub's CPU under a flood of 100,000 unroutable events/s).
		o.ClientName, o.Protocol = SubscriberName, 2
		tg.Single = &o
		dial, read, write = &o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FailureLogInterval <= 0 {
		cfg.FailureLogInterval = 5 * time.Second
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	if cfg.LagInterval <= 0 {
		cfg.LagInterval = 2 * time.Second
	}
	if cfg.ProbeDeadline <= 0 {
		cfg.ProbeDeadline = 2 * cfg.LagInterval
	}
	cfg.ProbeDeadline = max(cfg.ProbeDeadline, cfg.LagInterval*3/2)
	if cfg.Instance == "" {
		cfg.Instance = newInstanceID()
	}
	if cfg.Publisher != nil {
		// An attempt to subscribe over a path that black-holes (a
		// partition) hangs until these run out: bounded by the probe
		// interval, a healed path is used within an interval and a
		// backoff, not go-redis's 3-5 s.
		for _, d := range []*time.Duration{dial, read, write} {
			if *d <= 0 || *d > cfg.LagInterval {
				*d = cfg.LagInterval
			}
		}
	}
	s := &Subscriber{target: tg, sink: sink, cfg: cfg}
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

// ProbesMissed counts the probe deadlines missed: each marked the bus
// down and replaced the subscription.
func (s *Subscriber) ProbesMissed() uint64 { return s.missed.Load() }

// Downs counts the times Ready went from true to false, and returns when
// it last did (zero before the first).
func (s *Subscriber) Downs() (uint64, time.Time) {
	n := s.downs.Load()
	if n == 0 {
		return 0, time.Time{}
	}
	return n, time.Unix(0, s.lastDown.Load())
}

// setDown clears readiness; it reports whether it was set.
func (s *Subscriber) setDown() bool {
	if !s.ready.Swap(false) {
		return false
	}
	s.lastDown.Store(time.Now().UnixNano())
	s.downs.Add(1)
	return true
}

// runProbes publishes a lag probe every interval until ctx ends, and
// judges the subscription by them: when no probe has come back within
// ProbeDeadline of the due time of the newest one that did, the bus is
// down. The publish runs in its own goroutine, so a publish that hangs
// with Redis delays neither the next due time nor the verdict.
func (s *Subscriber) runProbes(ctx context.Context) {
	interval, deadline := s.cfg.LagInterval, s.cfg.ProbeDeadline
	due := make(chan int64, 1) // at most one publish waiting
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			var at int64
			select {
			case <-ctx.Done():
				return
			case at = <-due:
			}
			pctx, cancel := context.WithTimeout(ctx, deadline)
			err := s.cfg.Publisher.Publish(pctx, s.probeChannel, strconv.FormatInt(at, 10)).Err()
			cancel()
			if err != nil && ctx.Err() == nil {
				s.cfg.Logger.Debug("lag probe not published", "err", err)
			}
		}
	})

	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		if s.ready.Load() {
			if seen := s.seen.Load(); seen != 0 && now.UnixNano()-seen >= int64(deadline) {
				s.probeMissed(time.Duration(now.UnixNano() - seen))
			} else if !now.Before(next) {
				select {
				case due <- now.UnixNano():
				default: // the previous publish still hangs: this probe is skipped, its deadline still runs
				}
			}
		}
		for !next.After(now) {
			next = next.Add(interval)
		}
		wake := next
		if seen := s.seen.Load(); s.ready.Load() && seen != 0 {
			if d := time.Unix(0, seen+int64(deadline)); d.Before(wake) {
				wake = d
			}
		}
		timer.Reset(max(0, time.Until(wake)))
	}
}

// probeMissed marks the bus down and tears the subscription down; Run
// makes a new one.
func (s *Subscriber) probeMissed(since time.Duration) {
	if !s.setDown() {
		return
	}
	s.missed.Add(1)
	s.cfg.Logger.Warn("redis subscription: lag probe not read back; marking the bus down and resubscribing", "since_last_probe", since, "deadline", s.cfg.ProbeDeadline)
	s.kicked.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ps != nil {
		_ = s.ps.Close() // ends a read blocked on the dead connection
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
	for {
		old := s.seen.Load()
		if sent <= old || s.seen.CompareAndSwap(old, sent) {
			return
		}
	}
}

// Ready reports whether every pattern subscription is established (and,
// with a Publisher, the newest probe came back in time).
func (s *Subscriber) Ready() bool { return s.ready.Load() }

// Patterns returns the subscribed patterns.
func (s *Subscriber) Patterns() []string { return s.pats }

// Run holds the subscription until ctx ends, re-establishing it whenever
// it drops. Each time all patterns are confirmed the sink is told of the
// gap, so every client is resynced.
func (s *Subscriber) Run(ctx context.Context) {
	src := newSubSource(s.target, s.cfg.Logger)
	s.src.Store(&src)
	defer func() {
		s.src.Store(nil)
		src.close()
	}()
	log := s.cfg.Logger
	probing := s.cfg.Publisher != nil && s.probeChannel != ""
	if probing {
		var wg sync.WaitGroup
		defer wg.Wait()
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wg.Go(func() { s.runProbes(pctx) })
	}

	// replace makes a new subscription in place of the current one. The
	// dial may block (a hung Redis accepts connections it never answers):
	// readiness is cleared before it, never after.
	// Only Run replaces s.ps (the probe only closes it), so the loop
	// keeps its own copy and takes no lock per message.
	var ps *redis.PubSub
	tracer := s.cfg.TracerProvider.Tracer(TracerName)
	var span trace.Span // the attempt under way; nil once confirmed
	attempt := 0
	// startSpan opens the span of one (re)subscription: made here by
	// replace, or by go-redis itself after it lost the connection.
	startSpan := func() context.Context {
		attempt++
		var sctx context.Context
		sctx, span = tracer.Start(ctx, "redis.psubscribe", trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.StringSlice("topohub.patterns", s.pats), attribute.Int("topohub.attempt", attempt),
				attribute.String("server.address", s.addr())))
		return sctx
	}
	replace := func() {
		if ps != nil {
			_ = ps.Close()
		}
		if span != nil {
			span.SetStatus(codes.Error, "replaced before it was confirmed")
			span.End()
		}
		ps = src.psubscribe(startSpan(), s.pats)
		span.SetAttributes(attribute.String("server.address", s.addr())) // the node just chosen
		s.mu.Lock()
		s.ps = ps
		s.mu.Unlock()
	}
	replace()
	// A blocked read does not watch ctx: closing the connection ends it.
	closePS := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.ps != nil {
			_ = s.ps.Close()
		}
	}
	stop := context.AfterFunc(ctx, closePS)
	defer func() {
		if span != nil {
			span.SetStatus(codes.Error, "stopped before it was confirmed")
			span.End()
		}
		stop()
		closePS()
		s.mu.Lock()
		s.ps = nil
		s.mu.Unlock()
	}()

	// Without probes an idle connection is pinged after ProbeInterval.
	// With them the probe judges a ready subscription, and the read
	// timeout only bounds an attempt to subscribe that is never answered.
	timeout := s.cfg.ProbeInterval
	if probing {
		timeout = s.cfg.ProbeDeadline
	}
	backoff := 50 * time.Millisecond
	pingOut := false
	failures := newEvery(s.cfg.FailureLogInterval)
	for {
		msg, err := ps.ReceiveTimeout(ctx, timeout)
		if ctx.Err() != nil {
			s.setDown()
			return
		}
		if err != nil {
			var ne net.Error
			timedOut := errors.As(err, &ne) && ne.Timeout()
			// Where the subscription was, before replace moves it (on a
			// Cluster, to another node).
			lostAddr := s.addr()
			lost := false
			switch {
			case s.kicked.Swap(false) || errors.Is(err, redis.ErrClosed):
				// The probe marked the bus down and closed the connection.
				lost = s.setDown()
				recordErr(span, s.redactErr(err))
				replace()
			case timedOut && probing && s.ready.Load():
				continue // quiet bus; the probe is the judge
			case timedOut && !probing && s.ready.Load() && !pingOut:
				pingOut = true
				if err := ps.Ping(ctx); err == nil {
					continue
				}
				fallthrough
			case timedOut:
				// The ping went unanswered, or an attempt to subscribe
				// was: the connection is silently dead (a failover can
				// leave it so while Redis itself answers health checks).
				// Mark the bus down first, then start afresh.
				if s.setDown() {
					log.Warn("redis subscription unresponsive; reconnecting", "addr", lostAddr)
				}
				recordErr(span, s.redactErr(err))
				replace()
			default:
				// The connection failed (the server died, a failover
				// closed it): readiness first, then a new subscription,
				// which on Sentinel asks for the current primary and on
				// Cluster moves to another node.
				lost = s.setDown()
				recordErr(span, s.redactErr(err))
				replace()
			}
			pingOut = false
			if lost {
				log.Warn("redis subscription lost", "problem", ProblemTLS(err, s.target.TLS()), "addr", lostAddr, "err", s.redactErr(err))
				failures.Reset()
			} else {
				failures.Do(func() {
					log.Warn("redis subscription cannot be made; retrying", "problem", ProblemTLS(err, s.target.TLS()), "addr", s.addr(), "err", s.redactErr(err))
				})
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
				s.seen.Store(time.Now().UnixNano()) // the probe deadline runs from here
				s.ready.Store(true)
				if span != nil {
					span.End()
					span = nil
				}
				failures.Reset()
				log.Info("redis subscription established", "patterns", s.pats, "addr", s.addr())
			}
		case *redis.Pong:
		}
	}
}

// TracerName is the instrumentation scope of the subscriber's spans.
const TracerName = "topohub/busredis"

// recordErr records err on the span of the attempt it ended, if any.
func recordErr(span trace.Span, err error) {
	if span != nil {
		span.RecordError(err)
	}
}

// redactErr is err with the password, should its text hold it, masked.
func (s *Subscriber) redactErr(err error) error {
	text := err.Error()
	for _, p := range s.target.Passwords() {
		if strings.Contains(text, p) {
			text = RedactPassword(text, p)
		}
	}
	if text == err.Error() {
		return err
	}
	return errors.New(text)
}

// addr names where the subscription is (or is being) made, for logs and
// spans: the node chosen last, else the URL's first address.
func (s *Subscriber) addr() string {
	if n := s.Node(); n != "" {
		return n
	}
	return strings.Join(s.target.Addrs(), ",")
}

// every lets an action run at once and then at most once per interval,
// until Reset.
type every struct {
	interval time.Duration
	last     time.Time
}

func newEvery(d time.Duration) *every { return &every{interval: d} }

func (e *every) Do(f func()) {
	if now := time.Now(); e.last.IsZero() || now.Sub(e.last) >= e.interval {
		e.last = now
		f()
	}
}

func (e *every) Reset() { e.last = time.Time{} }

// Node returns the address of the server the subscription was made on
// last: the server, or on a Cluster the node it chose; on Sentinel, the
// failover client's name for the primary. Empty outside Run.
func (s *Subscriber) Node() string {
	if p := s.src.Load(); p != nil {
		return (*p).node()
	}
	return ""
}

// Established counts how many times the subscription was established.
func (s *Subscriber) Established() uint64 { return s.gaps.Load() }
