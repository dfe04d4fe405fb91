package handlers

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"topohub/hub"
	"topohub/internal/redistest"
)

func TestHealthAndReadiness(t *testing.T) {
	rs := redistest.StartDurable(t)
	th := newTestHub(t, withRedis(rs))
	status := func(path string) int {
		resp := th.get(context.Background(), th.http.URL+path, nil)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("/healthz"); got != http.StatusOK {
		t.Fatalf("/healthz %d", got)
	}
	if got := status("/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz %d with the subscription up", got)
	}
	rs.Kill(t)
	waitFor(t, 10*time.Second, "/readyz to report the lost subscription", func() bool { return status("/readyz") == http.StatusServiceUnavailable })
	if got := status("/healthz"); got != http.StatusOK {
		t.Fatalf("/healthz %d while Redis is down: the process is alive", got)
	}
	rs.Restart(t)
	waitFor(t, 15*time.Second, "/readyz to recover", func() bool { return status("/readyz") == http.StatusOK })
}

func TestSSEKeepalive(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) { c.Keepalive = 20 * time.Millisecond }))
	s := th.openSSE(th.sseURL(th.newTopology()), bearer(th.token()))
	if f := s.next(); f != ": keepalive\n\n" {
		t.Fatalf("first frame %q", f)
	}
	s.nextEvent() // snapshot
	for range 3 {
		if f := s.next(); f != ": keepalive\n\n" {
			t.Fatalf("idle stream sent %q, want keepalives", f)
		}
	}
}

// countingLimiter is a LocalLimiter that tells how many slots are held.
type countingLimiter struct {
	*hub.LocalLimiter
	held atomic.Int64
}

func (l *countingLimiter) Acquire(ctx context.Context, user string) (func(), error) {
	rel, err := l.LocalLimiter.Acquire(ctx, user)
	if err != nil {
		return nil, err
	}
	l.held.Add(1)
	return func() { rel(); l.held.Add(-1) }, nil
}

func TestDrainEndsStreamsAndRefusesNew(t *testing.T) {
	lim := &countingLimiter{LocalLimiter: hub.NewLocalLimiter(5)}
	th := newTestHub(t, withConfig(func(c *Config) { c.Limiter = lim }))
	id := th.newTopology()
	s := th.openSSE(th.sseURL(id), bearer(th.token()))
	s.nextEvent()
	ws := th.openWS(bearer(th.token()))
	ws.subscribe("1", id)
	th.srv.Drain()
	ws.expectClose(CloseGoingAway, 10*time.Second) // and answers the close handshake
	if !s.ended(10 * time.Second) {
		t.Fatal("stream still open after Drain")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Wait covers the WebSocket handler too, which http.Server.Shutdown
	// would not wait for: when it returns, every slot is released.
	if err := th.srv.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if n := lim.held.Load(); n != 0 {
		t.Fatalf("%d cap slots still held after Wait", n)
	}
	if n := th.hub.Clients(); n != 0 {
		t.Fatalf("%d hub clients after Wait", n)
	}
	resp := th.get(context.Background(), th.sseURL(id), bearer(th.token()))
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "shutting down") {
		t.Fatalf("after Drain: %d %s", resp.StatusCode, body)
	}
	waitFor(t, 10*time.Second, "client count back to zero", func() bool { return th.hub.Clients() == 0 })
}

func TestServesTheClientFiles(t *testing.T) {
	th := newTestHub(t)
	for path, want := range map[string]string{
		"/topohub.js":   "export class TopohubConnection",
		"/react.js":     "useTopologyStream",
		"/topohub.d.ts": "declare",
		"/react.d.ts":   "useTopologyStream",
	} {
		resp := th.get(context.Background(), th.http.URL+path, nil)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body without %q", path, resp.StatusCode, want)
		}
	}
}
