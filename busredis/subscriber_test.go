package busredis

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"topohub/hub"
	"topohub/internal/redistest"
)

// sink records what a Subscriber hands on.
type sink struct {
	mu   sync.Mutex
	msgs []string
	gaps atomic.Int64
}

func (s *sink) HandleMessage(channel string, body []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, channel+" "+string(body))
	return nil
}

func (s *sink) BusGap() { s.gaps.Add(1) }

func (s *sink) has(msg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

func TestSubscriberReconnectsFromASilentlyDeadConnection(t *testing.T) {
	proxy := redistest.StartProxy(t, pkgRedis.Addr)
	opts := pkgRedis.Options()
	opts.Addr = proxy.Addr()
	s := &sink{}
	sub := NewSubscriber(opts, s, SubscriberConfig{Families: hub.DefaultFamilies(), ProbeInterval: 100 * time.Millisecond, Logger: quietLog})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sub.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	waitFor(t, 10*time.Second, "subscription", sub.Ready)
	pub := pkgRedis.Client(t)
	pub.Publish(context.Background(), "topology.P.status", `{"n":1}`)
	waitFor(t, 10*time.Second, "first message", func() bool { return s.has(`topology.P.status {"n":1}`) })
	if s.gaps.Load() != 1 {
		t.Fatalf("gaps %d after the first subscription, want 1", s.gaps.Load())
	}

	// The connection stays open but carries nothing: only the probe can
	// tell. The subscriber must notice, reconnect, and report the gap.
	proxy.Freeze()
	waitFor(t, 10*time.Second, "a new subscription after the dead one", func() bool { return s.gaps.Load() >= 2 && sub.Ready() })
	pub.Publish(context.Background(), "topology.P.status", `{"n":2}`)
	waitFor(t, 10*time.Second, "messages over the new connection", func() bool { return s.has(`topology.P.status {"n":2}`) })
}

func TestSubscriberMeasuresBusLagWithItsOwnProbes(t *testing.T) {
	s := &sink{}
	pub := pkgRedis.Client(t)
	sub := NewSubscriber(pkgRedis.Options(), s, SubscriberConfig{
		Families: hub.DefaultFamilies(), Publisher: pub, LagInterval: 20 * time.Millisecond, Instance: "lag-test", Logger: quietLog,
	})
	if _, ok := sub.LastLag(); ok {
		t.Fatal("a lag before any probe")
	}
	// Another hub's probes on the same Redis reach this one as ordinary
	// messages of the family (and are dropped by routing, not here).
	other := "topology." + ProbeToken + ".other"
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sub.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, 10*time.Second, "subscription", sub.Ready)
	waitFor(t, 10*time.Second, "three probes read back", func() bool { return sub.Probes() >= 3 })
	lag, ok := sub.LastLag()
	if !ok || lag <= 0 || lag > 5*time.Second {
		t.Fatalf("lag %v (ok %v), want a positive round trip", lag, ok)
	}
	pub.Publish(context.Background(), other, "1")
	pub.Publish(context.Background(), "topology.P.status", `{"n":1}`)
	waitFor(t, 10*time.Second, "a message after the probes", func() bool { return s.has(`topology.P.status {"n":1}`) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if strings.HasPrefix(m, "topology."+ProbeToken+".lag-test ") {
			t.Fatalf("own probe reached the sink: %s", m)
		}
	}
	if !slices.Contains(s.msgs, other+" 1") {
		t.Fatalf("another hub's probe was swallowed: %v", s.msgs)
	}
}

// TestProbeMarksTheBusDownWithinItsDeadline hangs the path from the
// hub's probe publish to its subscription in each way it is known to
// hang, and checks that Ready goes false within the probe deadline of
// the fault (measured from the fault, however long the reconnect's dial
// then blocks), and that the subscription comes back, with a gap
// reported, once the fault ends.
func TestProbeMarksTheBusDownWithinItsDeadline(t *testing.T) {
	const interval, deadline = 150 * time.Millisecond, 300 * time.Millisecond
	// slack covers scheduling on a loaded machine: the verdict itself is
	// timed to the deadline.
	const slack = 100 * time.Millisecond
	cases := []struct {
		name  string
		fault func(t *testing.T, rs *redistest.Server, proxy *redistest.Proxy) (end func())
	}{
		{"blackholed subscription", func(t *testing.T, rs *redistest.Server, proxy *redistest.Proxy) func() {
			proxy.Freeze() // new connections are forwarded again
			return func() {}
		}},
		{"SIGSTOP", func(t *testing.T, rs *redistest.Server, proxy *redistest.Proxy) func() {
			rs.Freeze(t)
			return func() { rs.Thaw(t) }
		}},
		{"CLIENT PAUSE", func(t *testing.T, rs *redistest.Server, proxy *redistest.Proxy) func() {
			if err := rs.Client(t).Do(context.Background(), "CLIENT", "PAUSE", "1500").Err(); err != nil {
				t.Fatal(err)
			}
			return func() {}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := redistest.Start(t)
			proxy := redistest.StartProxy(t, rs.Addr)
			opts := rs.Options()
			opts.Addr = proxy.Addr()
			s := &sink{}
			pub := rs.Client(t)
			sub := NewSubscriber(opts, s, SubscriberConfig{
				Families: hub.DefaultFamilies(), Publisher: pub, LagInterval: interval, ProbeDeadline: deadline,
				MaxBackoff: 100 * time.Millisecond, Logger: quietLog,
			})
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { sub.Run(ctx) })
			defer func() { cancel(); wg.Wait() }()
			waitFor(t, 10*time.Second, "subscription", sub.Ready)
			waitFor(t, 10*time.Second, "probes read back", func() bool { return sub.Probes() >= 3 })
			if n, _ := sub.Downs(); n != 0 || sub.ProbesMissed() != 0 {
				t.Fatalf("a healthy bus was marked down (%d downs, %d missed probes)", n, sub.ProbesMissed())
			}

			at := time.Now()
			end := tc.fault(t, rs, proxy)
			waitFor(t, 5*time.Second, "the bus marked down", func() bool { return !sub.Ready() })
			n, down := sub.Downs()
			if took := down.Sub(at); n != 1 || took > deadline+slack {
				t.Fatalf("bus marked down %v after the fault (%d downs), want within %v", took, n, deadline)
			}
			if sub.ProbesMissed() != 1 {
				t.Fatalf("%d probes missed, want 1", sub.ProbesMissed())
			}
			end()
			waitFor(t, 15*time.Second, "a new subscription", func() bool { return sub.Ready() && s.gaps.Load() >= 2 })
			waitFor(t, 10*time.Second, "messages over it", func() bool {
				pub.Publish(context.Background(), "topology.P.status", `{"n":2}`)
				return s.has(`topology.P.status {"n":2}`)
			})
			probes := sub.Probes()
			waitFor(t, 10*time.Second, "probes again", func() bool { return sub.Probes() >= probes+3 })
		})
	}
}

// countSink counts messages.
type countSink struct{ n atomic.Int64 }

func (c *countSink) HandleMessage(string, []byte) error { c.n.Add(1); return nil }
func (c *countSink) BusGap()                            {}

// BenchmarkSubscriberThroughput measures the subscription's read loop:
// b.N messages published in pipelines, read back through one
// subscription (with the lag probe on, as in production).
func BenchmarkSubscriberThroughput(b *testing.B) {
	s := &countSink{}
	pub := pkgRedis.Client(b)
	sub := NewSubscriber(pkgRedis.Options(), s, SubscriberConfig{Families: hub.DefaultFamilies(), Publisher: pub, Logger: quietLog})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sub.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	waitFor(b, 10*time.Second, "subscription", sub.Ready)
	body := `{"payload":{"n":1}}`
	b.ResetTimer()
	for i := 0; i < b.N; i += 1000 {
		pipe := pub.Pipeline()
		for j := i; j < min(i+1000, b.N); j++ {
			pipe.Publish(ctx, "topology.B.status", body)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, 60*time.Second, "every message", func() bool { return s.n.Load() >= int64(b.N) })
}
