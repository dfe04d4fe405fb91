package busredis

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"topohub/hub"
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

// blackholeProxy forwards TCP to target until frozen: then it keeps every
// connection open but passes nothing, as a dead network path or a node
// stuck in a failover does. New connections after a freeze are forwarded.
type blackholeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen []chan struct{} // one per live connection pair
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *blackholeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			freeze := make(chan struct{})
			p.mu.Lock()
			p.frozen = append(p.frozen, freeze)
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-freeze:
						// Swallow everything; keep the sockets open.
						if err != nil {
							return
						}
						continue
					default:
					}
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			wg.Go(func() { pipe(up, c) })
			wg.Go(func() { pipe(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

// freeze blackholes every connection open now.
func (p *blackholeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		close(f)
	}
	p.frozen = nil
}

func TestSubscriberReconnectsFromASilentlyDeadConnection(t *testing.T) {
	proxy := startProxy(t, pkgRedis.Addr)
	opts := pkgRedis.Options()
	opts.Addr = proxy.ln.Addr().String()
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
	proxy.freeze()
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
