package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"topohub/busredis"
	"topohub/handlers"
	"topohub/hub"
	"topohub/internal/redistest"
	"topohub/internal/sim"
)

var pkgRedis *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &pkgRedis)) }

const testSecret = "0123456789abcdef0123456789abcdef-soak"

var quiet = slog.New(slog.DiscardHandler)

// startHub runs a hub in this process (so -race watches it under load),
// wired as cmd/topohub wires it, on a real redis-server.
func startHub(t *testing.T, prefix string) (url string, h *hub.Hub) {
	t.Helper()
	url, h, _ = startHubAt(t, prefix, "")
	return url, h
}

// startHubAt is startHub on addr ("" for a free port); stop ends it
// before the test does (idempotent).
func startHubAt(t *testing.T, prefix, addr string) (url string, h *hub.Hub, stop func()) {
	t.Helper()
	rdb := pkgRedis.Client(t)
	h, err := hub.New(hub.Config{Snapshots: busredis.NewSnapshots(rdb, prefix), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	sub := busredis.NewSubscriber(pkgRedis.Options(), h, busredis.SubscriberConfig{Families: h.Families(), Logger: quiet})
	srv, err := handlers.New(h, handlers.Config{
		Auth:    handlers.AuthConfig{Secret: []byte(testSecret), Issuer: "decnet", Audience: "decnet-dashboard", Type: "access"},
		Tickets: busredis.NewTickets(rdb, prefix, 0),
		Limiter: busredis.NewLimiter(rdb, busredis.LimiterConfig{Max: 5, Prefix: prefix, Logger: quiet}),
		Ready:   sub.Ready,
		Logger:  quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv.Handler())
	if addr != "" {
		ts.Listener.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l, err := net.Listen("tcp", addr)
			if err == nil {
				ts.Listener = l
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("listen %s: %v", addr, err)
			}
			time.Sleep(20 * time.Millisecond) // poll: the old listener's port is being released
		}
	}
	ts.Start()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sub.Run(ctx) })
	wg.Go(func() { h.Run(ctx, 0) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			srv.Drain()
			ts.Close()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Wait(sctx)
			scancel()
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for !sub.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("bus subscription not ready within 10s")
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	return ts.URL, h, stop
}

// soak runs topohub-sim --check as a person would, and returns its exit
// code, its JSON line and everything it printed.
func soak(t *testing.T, args ...string) (int, sim.Report, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, func(string) (string, bool) { return "", false }, &out, &errOut)
	var rep sim.Report
	line, _, _ := strings.Cut(out.String(), "\n")
	if code != exitError {
		if err := json.Unmarshal([]byte(line), &rep); err != nil {
			t.Fatalf("first line is not the JSON report: %q (%v)\nstderr:\n%s", line, err, errOut.String())
		}
	}
	return code, rep, out.String() + errOut.String()
}

// TestSoak is the end-to-end proof: 20 s of producer traffic with a burst
// far above the clients' queue size, one WebSocket and one SSE checker per
// topology, and at the end every client's state equal to Redis's, with
// the burst's resync seen.
func TestSoak(t *testing.T) {
	t.Parallel()
	prefix := redistest.UniqueID("soak") + ":"
	url, h := startHub(t, prefix)
	ids := []string{redistest.UniqueID("soak-a-"), redistest.UniqueID("soak-b-"), redistest.UniqueID("soak-c-")}
	start := time.Now()
	code, rep, out := soak(t,
		"--redis", pkgRedis.URL, "--prefix", prefix, "--ids", strings.Join(ids, ","),
		"--duration", "20s", "--rate", "30", "--traffic-rate", "200", "--fail-share", "0.2",
		// 20000 events to one topology at once: over 75 times the hub's
		// default queue of 256 per subscription. The clients take at most
		// 5000 frames a second (a fast editor, but slower than the burst),
		// so the overflow does not hinge on how fast this machine is.
		"--burst", "20000", "--burst-at", "8s",
		"--check", "--hub", url, "--secret", testSecret, "--clients", "1", "--client-rate", "5000", "--settle", "15s")
	t.Logf("soak took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	if code != exitOK || !rep.OK {
		t.Fatalf("exit %d, report ok=%v: some client's state is not Redis's", code, rep.OK)
	}
	if rep.Clients != 1+len(ids) || rep.Topologies != len(ids) {
		t.Errorf("%d clients for %d topologies, want one WebSocket and one SSE stream per topology", rep.Clients, rep.Topologies)
	}
	if rep.Resyncs < 1 || h.Stats().Resyncs.Load() < 1 {
		t.Errorf("%d resyncs seen (hub counted %d): the burst did not overflow a queue, so recovery was not tested", rep.Resyncs, h.Stats().Resyncs.Load())
	}
	if rep.Sent == nil || rep.Sent.ByKind[sim.KindFailed] == 0 || rep.Sent.ByKind[sim.KindTraffic] < 3000 {
		t.Errorf("sent %+v", rep.Sent)
	}
	if rep.Events == 0 {
		t.Error("no events received")
	}
	if rep.Reconnects != 0 {
		// Not wrong (the state still matched), but a client reading 5000
		// frames a second should not have been dropped.
		t.Logf("note: %d reconnects", rep.Reconnects)
	}
}

// TestSoakDetectsADifference: a mutation row written to Redis without its
// event (a producer bug, or a hub that lost the event) must fail the check
// and name the topology and field.
func TestSoakDetectsADifference(t *testing.T) {
	t.Parallel()
	prefix := redistest.UniqueID("tamper") + ":"
	url, _ := startHub(t, prefix)
	ids := []string{redistest.UniqueID("tamper-a-"), redistest.UniqueID("tamper-b-")}
	rdb := pkgRedis.Client(t)
	ghost := `{"id":"ghost","topology_id":"` + ids[1] + `","op":"add_decky","payload":{},"state":"pending","requested_at":"2026-11-28T10:00:00+00:00","applied_at":null,"reason":null}`
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// Once the clients follow the topology (its clients are counted
		// by the hub's cap), write the row without publishing.
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond): // poll interval
			}
			n, _ := rdb.HLen(context.Background(), sim.MutationsKey(prefix, ids[1])).Result()
			if n > 0 { // the simulator is running: the clients are connected
				rdb.HSet(context.Background(), sim.MutationsKey(prefix, ids[1]), "ghost", ghost)
				return
			}
		}
	})
	code, rep, out := soak(t,
		"--redis", pkgRedis.URL, "--prefix", prefix, "--ids", strings.Join(ids, ","),
		"--duration", "2s", "--rate", "20", "--traffic-rate", "0",
		"--check", "--hub", url, "--secret", testSecret, "--settle", "5s")
	close(stop)
	wg.Wait()
	if code != exitDiffers || rep.OK {
		t.Fatalf("exit %d ok=%v, want %d: the ghost row went unnoticed\n%s", code, rep.OK, exitDiffers, out)
	}
	if rep.Differing != 2 {
		t.Errorf("%d clients differ, want the two following %s", rep.Differing, ids[1])
	}
	for _, d := range rep.Differences {
		if d.Topology != ids[1] || d.Field != "in_flight[ghost]" || d.Want != "pending" || d.Got != "(absent)" {
			t.Errorf("difference %+v", d)
		}
	}
	if !strings.Contains(out, "field in_flight[ghost]") {
		t.Errorf("the summary does not name the field:\n%s", out)
	}
}

// TestSoakSurvivesHubRestart: the hub restarts in the middle of the
// traffic. The WebSocket client resumes with its last cursor (from the old
// process: a resync), the SSE clients reconnect with fresh tickets, and all
// end with Redis's state although they missed the events of the outage.
func TestSoakSurvivesHubRestart(t *testing.T) {
	t.Parallel()
	prefix := redistest.UniqueID("restart") + ":"
	url, h1, stop1 := startHubAt(t, prefix, "")
	ids := []string{redistest.UniqueID("restart-a-"), redistest.UniqueID("restart-b-")}
	rdb := pkgRedis.Client(t)
	restarted := make(chan *hub.Hub, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(restarted)
		// Once the traffic flows to connected clients, stop the hub; the
		// producers go on publishing into the outage; start a new one.
		deadline := time.Now().Add(20 * time.Second)
		for h1.Stats().Delivered.Load() < 100 {
			if time.Now().After(deadline) {
				return
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
		stop1()
		seen, _ := rdb.HLen(context.Background(), sim.MutationsKey(prefix, ids[0])).Result()
		for {
			n, _ := rdb.HLen(context.Background(), sim.MutationsKey(prefix, ids[0])).Result()
			if n != seen || time.Now().After(deadline) {
				break // the keys changed while no hub was listening
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
		_, h2, _ := startHubAt(t, prefix, strings.TrimPrefix(url, "http://"))
		restarted <- h2
	})
	code, rep, out := soak(t,
		"--redis", pkgRedis.URL, "--prefix", prefix, "--ids", strings.Join(ids, ","),
		"--duration", "5s", "--rate", "40", "--traffic-rate", "0", "--fail-share", "0.3",
		"--check", "--hub", url, "--secret", testSecret, "--settle", "15s")
	wg.Wait()
	h2 := <-restarted
	t.Logf("soak:\n%s", out)
	if h2 == nil {
		t.Fatal("the hub was not restarted during the traffic")
	}
	if code != exitOK || !rep.OK {
		t.Fatalf("exit %d, ok=%v after a hub restart", code, rep.OK)
	}
	if rep.Reconnects < rep.Clients {
		t.Errorf("%d reconnects for %d clients: not every client lived through the restart", rep.Reconnects, rep.Clients)
	}
	if rep.Resyncs < 1 {
		t.Error("the WebSocket resumed from the old process's cursor without a resync")
	}
	if h2.Stats().Delivered.Load() == 0 {
		t.Error("the new hub delivered nothing")
	}
}
