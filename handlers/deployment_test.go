package handlers

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

// deployment is hub instances behind one load balancer: they share the
// redis-server and the key prefix of tickets and connection counts, each
// with its own busredis.Tickets and busredis.Limiter.
type deployment struct {
	t         *testing.T
	prefix    string
	ticketTTL time.Duration // zero: the default
	slotTTL   time.Duration // the limiter's TTL
	instances []*instance
}

func newDeployment(t *testing.T) *deployment {
	return &deployment{t: t, prefix: redistest.UniqueID("d") + ":", slotTTL: 15 * time.Second}
}

// instance is one hub process of a deployment.
type instance struct {
	*testHub
	limiter *busredis.Limiter
	crashed atomic.Bool
	stop    func() // ends the limiter's heartbeat
}

// The handlers take their slots through the instance, so a crash can lose
// the releases.
var _ hub.ConnLimiter = (*instance)(nil)

// Acquire takes a slot from the instance's limiter; once the instance has
// crashed, releasing it does nothing, as when the process dies.
func (in *instance) Acquire(ctx context.Context, user string) (func(), error) {
	rel, err := in.limiter.Acquire(ctx, user)
	if err != nil {
		return nil, err
	}
	return func() {
		if !in.crashed.Load() {
			rel()
		}
	}, nil
}

// crash stops the instance's heartbeat and loses the releases of its
// open slots; its HTTP server stays up so its streams can be closed.
func (in *instance) crash() {
	in.crashed.Store(true)
	in.stop()
}

func (d *deployment) start(opts ...hubOption) *instance {
	t := d.t
	t.Helper()
	rdb := pkgRedis.Client(t)
	in := &instance{limiter: busredis.NewLimiter(rdb, busredis.LimiterConfig{
		Prefix: d.prefix, TTL: d.slotTTL, Heartbeat: d.slotTTL / 10, Logger: quietLog,
	})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { in.limiter.Run(ctx) })
	in.stop = func() { cancel(); wg.Wait() }
	t.Cleanup(in.stop)
	tickets := busredis.NewTickets(rdb, d.prefix, d.ticketTTL)
	opts = append([]hubOption{withConfig(func(c *Config) {
		c.Tickets = tickets
		c.Limiter = in
	})}, opts...)
	in.testHub = newTestHub(t, opts...)
	waitFor(t, 10*time.Second, "limiter registered", func() bool {
		return rdb.Exists(context.Background(), in.limiter.InstanceKey()).Val() == 1
	})
	d.instances = append(d.instances, in)
	return in
}

// newTopology creates one topology for every instance.
func (d *deployment) newTopology() string {
	id := redistest.UniqueID("topo-")
	for _, in := range d.instances {
		in.createTopology(id, "active")
	}
	return id
}

func TestTicketRedeemedOnAnotherInstance(t *testing.T) {
	d := newDeployment(t)
	a, b := d.start(), d.start()
	id := d.newTopology()
	ticket := a.mintTicket(a.token())

	s := b.openSSE(b.sseURL(id)+"?ticket="+ticket, nil)
	if f := parseFrame(t, s.nextEvent()); f.event != "snapshot" {
		t.Fatalf("first event %+v", f)
	}
	for name, in := range map[string]*instance{"minting": a, "redeeming": b} {
		if code, body := in.status(http.MethodGet, in.sseURL(id)+"?ticket="+ticket, nil); code != http.StatusUnauthorized {
			t.Errorf("second redemption on the %s instance: %d %s, want 401", name, code, body)
		}
	}
}

func TestConcurrentTicketRedemptionAcrossInstances(t *testing.T) {
	d := newDeployment(t)
	a, b := d.start(), d.start()
	id := d.newTopology()
	ticket := a.mintTicket(a.token())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 50 {
		in := []*instance{a, b}[i%2]
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.sseURL(id)+"?ticket="+ticket, nil)
			<-start
			resp, err := noKeepAlive.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				ok.Add(1)
			case http.StatusUnauthorized:
				refused.Add(1)
				_, _ = io.Copy(io.Discard, resp.Body)
			default:
				t.Errorf("status %d", resp.StatusCode)
			}
		})
	}
	close(start)
	wg.Wait()
	if ok.Load() != 1 || refused.Load() != 49 {
		t.Fatalf("%d redemptions succeeded and %d were refused, want 1 and 49", ok.Load(), refused.Load())
	}
}

func TestConnectionCapAcrossInstances(t *testing.T) {
	d := newDeployment(t)
	a, b := d.start(), d.start()
	id := d.newTopology()
	tok := a.token()
	for range 3 {
		a.openSSE(a.sseURL(id), bearer(tok)).nextEvent()
	}
	var onB []*sseStream
	for range 2 {
		s := b.openSSE(b.sseURL(id), bearer(tok))
		s.nextEvent()
		onB = append(onB, s)
	}
	for name, in := range map[string]*instance{"a": a, "b": b} {
		if code, body := in.status(http.MethodGet, in.sseURL(id), bearer(tok)); code != http.StatusTooManyRequests {
			t.Fatalf("6th stream on %s: %d %s, want 429", name, code, body)
		}
	}
	// Another user is not affected.
	b.openSSE(b.sseURL(id), bearer(b.token(claim("uuid", "user-2")))).nextEvent()

	onB[0].Close()
	waitFor(t, 10*time.Second, "slot released on b", func() bool { return b.limiter.Open("user-1") == 1 })
	a.openSSE(a.sseURL(id), bearer(tok)).nextEvent()
	if code, _ := b.status(http.MethodGet, b.sseURL(id), bearer(tok)); code != http.StatusTooManyRequests {
		t.Fatalf("stream over the cap after a release: %d", code)
	}
}

func TestCrashedInstanceSlotsFreed(t *testing.T) {
	d := newDeployment(t)
	d.slotTTL = time.Second
	a, b := d.start(), d.start()
	id := d.newTopology()
	tok := a.token()
	for range 3 {
		a.openSSE(a.sseURL(id), bearer(tok)).nextEvent()
	}
	for range 2 {
		s := b.openSSE(b.sseURL(id), bearer(tok))
		s.nextEvent()
		defer s.Close()
	}

	b.crash()
	crashed := time.Now()
	if code, body := a.status(http.MethodGet, a.sseURL(id), bearer(tok)); code != http.StatusTooManyRequests {
		t.Fatalf("right after the crash: %d %s; the dead instance's slots should still count", code, body)
	}
	// The dead instance's key expires within slotTTL of its last
	// heartbeat (docs/deployment.md); the next Acquire drops its counts.
	waitFor(t, d.slotTTL+5*time.Second, "dead instance's slots freed", func() bool {
		code, _ := a.status(http.MethodGet, a.sseURL(id), bearer(tok))
		return code == http.StatusOK
	})
	t.Logf("slots freed %s after the crash (TTL %s)", time.Since(crashed).Round(time.Millisecond), d.slotTTL)
	waitFor(t, 10*time.Second, "probe stream released", func() bool { return a.limiter.Open("user-1") == 3 })
	for range 2 {
		a.openSSE(a.sseURL(id), bearer(tok)).nextEvent()
	}
	if code, _ := a.status(http.MethodGet, a.sseURL(id), bearer(tok)); code != http.StatusTooManyRequests {
		t.Fatalf("6th stream after the heal: %d, want 429", code)
	}
}
