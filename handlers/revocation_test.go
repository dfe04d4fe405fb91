package handlers

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

var _ revocationBatcher = (*busredis.Revocations)(nil)

func newTestRevocations(t *testing.T) *busredis.Revocations {
	return busredis.NewRevocations(pkgRedis.Client(t), redistest.UniqueID("rv")+":revoked")
}

func withRevocations(l hub.RevocationList) hubOption {
	return withConfig(func(c *Config) { c.Revocations = l })
}

// watchRevocations runs th's watcher until the test ends.
func (th *testHub) watchRevocations(every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { th.srv.WatchRevocations(ctx, every) })
	th.t.Cleanup(func() { cancel(); wg.Wait() })
}

func TestRevokedTokenRefused(t *testing.T) {
	revs := newTestRevocations(t)
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withRevocations(revs),
		withConfig(func(c *Config) { c.Auth.AllowQueryToken = true }))
	id := th.newTopology()
	ctx := context.Background()
	late := th.mintTicket(th.token(claim("jti", "j-late")))
	if err := revs.Revoke(ctx, "j-bad", "j-late"); err != nil {
		t.Fatal(err)
	}
	bad := th.token(claim("jti", "j-bad"))
	cases := []struct {
		name, method, url string
		header            http.Header
	}{
		{"bearer", http.MethodGet, th.sseURL(id), bearer(bad)},
		{"query token", http.MethodGet, th.sseURL(id) + "?token=" + bad, nil},
		{"ticket minted before the revocation", http.MethodGet, th.sseURL(id) + "?ticket=" + late, nil},
		{"mint", http.MethodPost, th.ticketURL(), bearer(bad)},
	}
	for _, c := range cases {
		if code, body := th.status(c.method, c.url, c.header); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", c.name, code, body)
		}
	}
	th.openSSE(th.sseURL(id), bearer(th.token(claim("jti", "j-ok")))).nextEvent()
	th.openSSE(th.sseURL(id), bearer(th.token())).nextEvent() // no jti
}

// oneByOne hides RevokedMany, so the watcher asks per token id.
type oneByOne struct{ hub.RevocationList }

func TestRevokedStreamEnds(t *testing.T) {
	for name, wrap := range map[string]func(*busredis.Revocations) hub.RevocationList{
		"batched":    func(r *busredis.Revocations) hub.RevocationList { return r },
		"one by one": func(r *busredis.Revocations) hub.RevocationList { return oneByOne{r} },
	} {
		t.Run(name, func(t *testing.T) {
			revs := newTestRevocations(t)
			th := newTestHub(t, withTickets(newTestTickets(t, 0)), withRevocations(wrap(revs)))
			th.watchRevocations(20 * time.Millisecond)
			id := th.newTopology()
			revoked := th.openSSE(th.sseURL(id), bearer(th.token(claim("jti", "j-a"))))
			viaTicket := th.openSSE(th.sseURL(id)+"?ticket="+th.mintTicket(th.token(claim("jti", "j-a"))), nil)
			kept := th.openSSE(th.sseURL(id), bearer(th.token(claim("jti", "j-b"))))
			for _, s := range []*sseStream{revoked, viaTicket, kept} {
				s.nextEvent()
			}
			var clients []*hub.Client
			th.hub.ForEachClient(func(c *hub.Client) { clients = append(clients, c) })

			if err := revs.Revoke(context.Background(), "j-a"); err != nil {
				t.Fatal(err)
			}
			if !revoked.ended(10*time.Second) || !viaTicket.ended(10*time.Second) {
				t.Fatal("a stream of the revoked token is still open")
			}
			for _, c := range clients {
				want := hub.DisconnectNone
				if c.TokenID() == "j-a" {
					want = hub.DisconnectRevoked
				}
				if c.Reason() != want {
					t.Errorf("client of token %q: reason %s, want %s", c.TokenID(), c.Reason(), want)
				}
			}
			th.publish("topology."+id+".status", `{"state":"still here"}`)
			if f := parseFrame(t, kept.nextEvent()); f.event != "status" {
				t.Fatalf("the other token's stream: %+v", f)
			}
		})
	}
}

func TestRevokedWebSocketClosed4001(t *testing.T) {
	revs := newTestRevocations(t)
	th := newTestHub(t, withRevocations(revs))
	th.watchRevocations(20 * time.Millisecond)
	id := th.newTopology()
	revoked := th.openWS(bearer(th.token(claim("jti", "ws-a"))))
	kept := th.openWS(bearer(th.token(claim("jti", "ws-b"))))
	for _, ws := range []*wsClient{revoked, kept} {
		ws.subscribe("1", id)
	}
	if err := revs.Revoke(context.Background(), "ws-a"); err != nil {
		t.Fatal(err)
	}
	revoked.expectClose(CloseCredentials, 10*time.Second)
	th.publish("topology."+id+".status", `{"state":"still here"}`)
	kept.expect("event", "status")
}

func TestWatchRevocationsWithoutListReturns(t *testing.T) {
	th := newTestHub(t)
	done := make(chan struct{})
	go func() {
		th.srv.WatchRevocations(context.Background(), time.Millisecond)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchRevocations without a revocation list did not return")
	}
}
