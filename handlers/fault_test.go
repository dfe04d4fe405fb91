package handlers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

// Probe timings of the fault suite: short, so the suite is quick; the
// bounds checked scale with them.
const (
	faultProbeInterval = 200 * time.Millisecond
	faultProbeDeadline = 2 * faultProbeInterval
	// faultSlack covers scheduling and the /readyz poll on a loaded
	// machine; the verdicts themselves are timed to the deadline.
	faultSlack = 150 * time.Millisecond
)

// newFaultHub is newTestHub with the end-to-end probe on, and every
// connection of the hub to Redis (subscription, snapshots, probe
// publishes) made through proxy, as a network path between them would
// carry them.
func newFaultHub(t *testing.T, rs *redistest.Server, proxy *redistest.Proxy) *testHub {
	t.Helper()
	opts := rs.Options()
	opts.Addr = proxy.Addr()
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	th := &testHub{t: t, redis: rs, rdb: rdb, prefix: redistest.UniqueID("f") + ":"}
	th.snaps = busredis.NewSnapshots(rdb, th.prefix)
	h, err := hub.New(hub.Config{Snapshots: th.snaps, Logger: quietLog, MaxLag: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	th.hub = h
	th.sub = busredis.NewSubscriber(opts, h, busredis.SubscriberConfig{
		Families: h.Families(), Publisher: rdb, LagInterval: faultProbeInterval, ProbeDeadline: faultProbeDeadline, Logger: quietLog,
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { th.sub.Run(ctx) })
	srv, err := New(h, Config{
		Logger: quietLog, Ready: th.sub.Ready, BusLag: th.sub.LastLag,
		Auth: AuthConfig{Secret: testSecret, Issuer: "decnet", Audience: "decnet-dashboard", Type: "access"},
	})
	if err != nil {
		t.Fatal(err)
	}
	th.http = httptest.NewUnstartedServer(srv.Handler())
	th.serve(srv, cancel, &wg, 10*time.Second)
	return th
}

// faultClient is one client's view of the suite's topologies, read on
// its own goroutine.
type faultClient struct {
	name  string
	mu    sync.Mutex
	track map[string]*overloadTracker
	err   error // what ended the connection early, or broke the tracker
}

func (fc *faultClient) see(m wsMsg) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	tr := fc.track[m.Topology]
	if tr == nil {
		fc.err = fmt.Errorf("event for unknown topology %q", m.Topology)
		return
	}
	if err := tr.see(m); err != nil && fc.err == nil {
		fc.err = err
	}
}

func (fc *faultClient) fail(err error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.err == nil {
		fc.err = err
	}
}

// state copies the client's trackers.
func (fc *faultClient) state() (map[string]overloadTracker, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	out := map[string]overloadTracker{}
	for id, tr := range fc.track {
		out[id] = *tr
	}
	return out, fc.err
}

// faultPublisher publishes steadily as a producer would, directly to
// Redis: before event n of a topology its status is set to "seq:<n>", so
// a snapshot tells which events it reflects. A publish that fails is
// retried with the same n, so every n is published at least once.
type faultPublisher struct {
	rdb  *redis.Client
	ids  []string
	snap *busredis.Snapshots
	seq  atomic.Int64 // newest n published to every topology
	stop chan struct{}
	done chan struct{}
}

func startFaultPublisher(t *testing.T, rdb *redis.Client, snaps *busredis.Snapshots, ids []string, perSecond int) *faultPublisher {
	p := &faultPublisher{rdb: rdb, ids: ids, snap: snaps, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		for n := int64(1); ; {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for _, id := range ids {
					pipe.HSet(ctx, snaps.TopologyKey(id), "status", fmt.Sprint("seq:", n))
					pipe.Publish(ctx, "topology."+id+".fault", fmt.Sprintf(`{"payload":{"seq":%d}}`, n))
				}
				return nil
			})
			cancel()
			if err == nil {
				p.seq.Store(n)
				n++
			}
		}
	}()
	t.Cleanup(func() { p.halt() })
	return p
}

// halt stops publishing and returns the newest n published.
func (p *faultPublisher) halt() int64 {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	return p.seq.Load()
}

// readyWatch polls /readyz and records when its answer changes.
type readyWatch struct {
	mu      sync.Mutex
	changes []readyChange
	stop    chan struct{}
	done    chan struct{}
}

type readyChange struct {
	at     time.Time
	status int
}

func watchReady(t *testing.T, url string) *readyWatch {
	tr := &http.Transport{}
	client := &http.Client{Transport: tr, Timeout: time.Second}
	w := &readyWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer tr.CloseIdleConnections()
		last := 0
		for {
			status := 0
			if resp, err := client.Get(url + "/readyz"); err == nil {
				status = resp.StatusCode
				resp.Body.Close()
			}
			if status != last {
				w.mu.Lock()
				w.changes = append(w.changes, readyChange{time.Now(), status})
				w.mu.Unlock()
				last = status
			}
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond): // poll interval
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-w.stop:
		default:
			close(w.stop)
		}
		<-w.done
	})
	return w
}

// first returns when /readyz first answered status at or after from.
func (w *readyWatch) first(status int, from time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.changes {
		if c.status == status && !c.at.Before(from) {
			return c.at, true
		}
	}
	return time.Time{}, false
}

// current is the newest answer.
func (w *readyWatch) current() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.changes) == 0 {
		return 0
	}
	return w.changes[len(w.changes)-1].status
}

// A faultCase breaks the path between hub and Redis. inject starts the
// fault and returns when it is over: the time from which the hub can
// recover. short faults may end before /readyz can be seen answering
// 503; the bus is then checked to have gone down through the
// subscriber's own record.
type faultCase struct {
	name   string
	short  bool
	inject func(t *testing.T, rs *redistest.Server, proxy *redistest.Proxy, th *testHub) (recovered time.Time)
}

// faultHold is how long the long faults last.
const faultHold = 8 * time.Second

var faultCases = []faultCase{
	{name: "redis restart", short: true, inject: func(t *testing.T, rs *redistest.Server, _ *redistest.Proxy, _ *testHub) time.Time {
		rs.Restart(t) // durable: the topologies survive
		return time.Now()
	}},
	{name: "CLIENT KILL TYPE pubsub", short: true, inject: func(t *testing.T, rs *redistest.Server, _ *redistest.Proxy, _ *testHub) time.Time {
		if err := rs.Client(t).Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}},
	{name: "CLIENT PAUSE 8000", inject: func(t *testing.T, rs *redistest.Server, _ *redistest.Proxy, _ *testHub) time.Time {
		if err := rs.Client(t).Do(context.Background(), "CLIENT", "PAUSE", faultHold.Milliseconds()).Err(); err != nil {
			t.Fatal(err)
		}
		end := time.Now().Add(faultHold)
		<-time.After(time.Until(end)) // the fault's duration, not synchronisation
		return end
	}},
	{name: "SIGSTOP 8s", inject: func(t *testing.T, rs *redistest.Server, _ *redistest.Proxy, _ *testHub) time.Time {
		rs.Freeze(t)
		<-time.After(faultHold) // the fault's duration, not synchronisation
		rs.Thaw(t)
		return time.Now()
	}},
	{name: "blackholing proxy 8s", inject: func(t *testing.T, _ *redistest.Server, proxy *redistest.Proxy, _ *testHub) time.Time {
		// Every connection through the proxy, open or new, carries
		// nothing until Heal; those open during the partition stay dead.
		proxy.Partition()
		<-time.After(faultHold) // the fault's duration, not synchronisation
		proxy.Heal()
		return time.Now()
	}},
}

// TestFaultSuite breaks the path between the hub and Redis in each way
// of faultCases while a producer publishes 200 events/s on two
// topologies to one WebSocket client (subscribed to both) and one SSE
// client per topology. For each fault: no client connection is closed;
// /readyz answers 503 within two probe intervals of the fault and 200
// within 1 s of its end; every subscription gets a resync snapshot; and
// every event published is delivered or covered by a resync (none after
// a gap without one), through to the last one published after recovery.
func TestFaultSuite(t *testing.T) {
	for _, fc := range faultCases {
		t.Run(strings.ReplaceAll(fc.name, " ", "_"), func(t *testing.T) { runFaultCase(t, fc) })
	}
}

func runFaultCase(t *testing.T, fc faultCase) {
	rs := redistest.StartDurable(t)
	proxy := redistest.StartProxy(t, rs.Addr)
	th := newFaultHub(t, rs, proxy)
	producer := rs.Client(t)
	ids := []string{th.newTopology(), th.newTopology()}
	for _, id := range ids {
		th.createTopology(id, "seq:0")
	}

	newClient := func(name string) *faultClient {
		c := &faultClient{name: name, track: map[string]*overloadTracker{}}
		for _, id := range ids {
			c.track[id] = &overloadTracker{}
		}
		return c
	}
	var readers sync.WaitGroup
	var ending atomic.Bool // the test closes the connections from here on
	var clients []*faultClient
	var pongs atomic.Int64

	// One WebSocket client on both topologies.
	wsc := newClient("websocket")
	clients = append(clients, wsc)
	ws := th.openWS(bearer(th.token(claim("uuid", "fault-ws"))))
	for i, id := range ids {
		wsc.see(ws.subscribe(fmt.Sprint(i), id))
	}
	readers.Go(func() {
		for {
			msgs, err := ws.read(time.Minute)
			if err != nil {
				if !ending.Load() {
					wsc.fail(fmt.Errorf("connection ended: %w", err))
				}
				return
			}
			for _, m := range msgs {
				switch m.Op {
				case "event":
					wsc.see(m)
				case "pong":
					pongs.Add(1)
				}
			}
		}
	})
	// One SSE client per topology.
	var streams []*sseStream
	for i, id := range ids {
		c := &faultClient{name: fmt.Sprint("sse-", i), track: map[string]*overloadTracker{id: {}}}
		clients = append(clients, c)
		s := th.openSSE(th.sseURL(id), bearer(th.token(claim("uuid", fmt.Sprint("fault-sse-", i)))))
		streams = append(streams, s)
		readers.Go(func() {
			for f := range s.frames {
				if strings.HasPrefix(f, ":") {
					continue
				}
				var m wsMsg
				for line := range strings.SplitSeq(strings.TrimSuffix(f, "\n\n"), "\n") {
					k, v, _ := strings.Cut(line, ": ")
					switch k {
					case "event":
						m.Event = v
					case "data":
						m.Data = []byte(v)
					}
				}
				m.Topology = id
				c.see(m)
			}
			if !ending.Load() {
				c.fail(fmt.Errorf("stream ended"))
			}
		})
	}
	defer func() {
		ending.Store(true)
		ws.conn.CloseNow()
		for _, s := range streams {
			s.Close()
		}
		readers.Wait()
	}()

	pub := startFaultPublisher(t, producer, th.snaps, ids, 100) // 2 topologies: 200 events/s
	// current reports whether every client is at or past n on every
	// topology, failing the test on a broken client.
	current := func(n int64) bool {
		for _, c := range clients {
			st, err := c.state()
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			for id, tr := range st {
				if tr.uncoveredAt != 0 {
					t.Fatalf("%s, %s: event %d after a gap no resync covered", c.name, id, tr.uncoveredAt)
				}
				if int64(tr.last) < n {
					return false
				}
			}
		}
		return true
	}
	waitFor(t, 10*time.Second, "steady delivery", func() bool { return pub.seq.Load() >= 20 && current(20) })
	resyncsBefore := map[string]map[string]int{}
	for _, c := range clients {
		st, _ := c.state()
		resyncsBefore[c.name] = map[string]int{}
		for id, tr := range st {
			resyncsBefore[c.name][id] = tr.resyncs
		}
	}
	if th.sub.ProbesMissed() != 0 {
		t.Fatalf("%d probes missed before the fault", th.sub.ProbesMissed())
	}
	established := th.sub.Established()
	ready := watchReady(t, th.http.URL)
	waitFor(t, 5*time.Second, "/readyz 200 before the fault", func() bool { return ready.current() == http.StatusOK })

	faultAt := time.Now()
	recovered := fc.inject(t, rs, proxy, th)

	// Down within two probe intervals of the fault: the subscriber's own
	// record, and /readyz for faults that last long enough to poll.
	waitFor(t, 5*time.Second, "the bus marked down", func() bool { n, _ := th.sub.Downs(); return n > 0 })
	_, down := th.sub.Downs()
	if took := down.Sub(faultAt); took > faultProbeDeadline+faultSlack {
		t.Errorf("bus marked down %v after the fault, want within %v", took, faultProbeDeadline)
	}
	if !fc.short {
		at, ok := ready.first(http.StatusServiceUnavailable, faultAt)
		if !ok {
			t.Fatal("/readyz never answered 503")
		}
		if took := at.Sub(faultAt); took > faultProbeDeadline+faultSlack {
			t.Errorf("/readyz 503 %v after the fault, want within %v", took, faultProbeDeadline)
		}
	}
	// Ready again within 1 s of the fault's end.
	waitFor(t, 10*time.Second, "/readyz 200 after recovery", func() bool {
		_, ok := ready.first(http.StatusOK, recovered)
		return ok && ready.current() == http.StatusOK
	})
	at, _ := ready.first(http.StatusOK, recovered)
	if took := at.Sub(recovered); took > time.Second {
		t.Errorf("/readyz 200 %v after the fault ended, want within 1s", took)
	}
	if th.sub.Established() <= established {
		t.Fatal("the subscription was not re-established")
	}

	// Everything published from here on is delivered.
	after := pub.seq.Load()
	waitFor(t, 15*time.Second, "events published after recovery", func() bool { return pub.seq.Load() >= after+40 })
	last := pub.halt()
	waitFor(t, 15*time.Second, "every client current to the last event", func() bool { return current(last) })
	for _, c := range clients {
		st, err := c.state()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for id, tr := range st {
			if tr.resyncs <= resyncsBefore[c.name][id] {
				t.Errorf("%s, %s: no resync after the fault", c.name, id)
			}
			if tr.uncoveredAt != 0 {
				t.Errorf("%s, %s: event %d after a gap no resync covered", c.name, id, tr.uncoveredAt)
			}
		}
	}
	// The connections are still open: the WebSocket answers a ping.
	ws.send(`{"op":"ping","id":"p"}`)
	waitFor(t, 5*time.Second, "a pong", func() bool { return pongs.Load() > 0 })
	if _, err := wsc.state(); err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		select {
		case <-s.done:
			t.Fatal("an SSE stream ended")
		default:
		}
	}
	t.Logf("down %v after the fault; ready %v after its end; %d probes missed; bus lag now %v",
		down.Sub(faultAt).Round(time.Millisecond), at.Sub(recovered).Round(time.Millisecond), th.sub.ProbesMissed(), lagOf(th.sub))
}

func lagOf(s *busredis.Subscriber) time.Duration {
	l, _ := s.LastLag()
	return l.Round(time.Microsecond)
}
