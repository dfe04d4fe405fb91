package handlers

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

func (th *testHub) ticketURL() string { return th.http.URL + "/api/v1/auth/sse-ticket" }

// status performs a request and returns its status and body; an event
// stream that started is closed at once, its body unread.
func (th *testHub) status(method, url string, header http.Header) (int, string) {
	th.t.Helper()
	resp := th.do(context.Background(), method, url, header)
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp.StatusCode, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// mintTicket mints a ticket with tok, which must succeed.
func (th *testHub) mintTicket(tok string) string {
	th.t.Helper()
	code, body := th.status(http.MethodPost, th.ticketURL(), bearer(tok))
	if code != http.StatusOK {
		th.t.Fatalf("mint: %d %s", code, body)
	}
	var r ticketResponse
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Ticket == "" {
		th.t.Fatalf("mint: %s (%v)", body, err)
	}
	return r.Ticket
}

// withTickets gives the hub a ticket store on the package's redis-server.
func withTickets(tk *busredis.Tickets) hubOption {
	return withConfig(func(c *Config) { c.Tickets = tk })
}

func newTestTickets(t *testing.T, ttl time.Duration) *busredis.Tickets {
	return busredis.NewTickets(pkgRedis.Client(t), redistest.UniqueID("tk")+":", ttl)
}

// deadRedisClient is a client of an address nothing listens on.
func deadRedisClient(t *testing.T) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second, DialerRetries: 1})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func TestTicketMint(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	tok := th.token(claim("jti", "jti-mint"))

	req, _ := http.NewRequest(http.MethodPost, th.ticketURL(), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := noKeepAlive.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	ticket, _ := got["ticket"].(string)
	if len(got) != 2 || len(ticket) != 43 || got["expires_in"] != float64(60) {
		t.Fatalf(`body %s, want {"ticket":"<43 chars>","expires_in":60}`, body)
	}
	if strings.Contains(ticket, tok) || strings.ContainsAny(ticket, "+/=") {
		t.Fatalf("ticket %q is not opaque URL-safe base64", ticket)
	}

	s := th.openSSE(th.sseURL(id)+"?ticket="+ticket, nil)
	if f := parseFrame(t, s.nextEvent()); f.event != "snapshot" {
		t.Fatalf("first event %+v", f)
	}
	th.hub.ForEachClient(func(c *hub.Client) {
		if c.User() != "user-1" || c.TokenID() != "jti-mint" {
			t.Errorf("stream opened by the ticket serves %q with token id %q", c.User(), c.TokenID())
		}
	})
	if code, body := th.status(http.MethodGet, th.sseURL(id)+"?ticket="+ticket, nil); code != http.StatusUnauthorized {
		t.Fatalf("reused ticket: %d %s", code, body)
	}
}

func TestTicketMintRefusals(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) { c.Auth.AllowQueryToken = true }))
	id := th.newTopology()
	ticket := th.mintTicket(th.token())
	cases := []struct {
		name   string
		query  string
		header http.Header
		want   int
	}{
		{"no credentials", "", nil, 401},
		{"ticket", "?ticket=" + ticket, nil, 401},
		{"query token even when enabled for streams", "?token=" + th.token(), nil, 401},
		{"not bearer", "", http.Header{"Authorization": {"Basic dTpw"}}, 401},
		{"bearer without token", "", http.Header{"Authorization": {"Bearer "}}, 401},
		{"garbage", "", bearer("not.a.jwt"), 401},
		{"expired", "", bearer(th.token(claim("exp", time.Now().Add(-time.Minute).Unix()))), 401},
		{"wrong issuer", "", bearer(th.token(claim("iss", "evil"))), 401},
		{"role", "", bearer(th.token(claim("role", "guest"))), 403},
		{"no role", "", bearer(th.token(without("role"))), 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, th.ticketURL()+c.query, nil)
			for k, v := range c.header {
				req.Header[k] = v
			}
			resp, err := noKeepAlive.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want || !strings.Contains(string(body), `"error"`) || strings.Contains(string(body), "ticket\":") {
				t.Fatalf("%d %s, want %d with an error message", resp.StatusCode, body, c.want)
			}
			if c.want == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	// Offering the ticket to the minting route did not consume it.
	th.openSSE(th.sseURL(id)+"?ticket="+ticket, nil).nextEvent()
}

func TestTicketMintRateLimited(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) {
		c.TicketRate = rate.Every(time.Hour)
		c.TicketBurst = 2
	}))
	tok := th.token()
	th.mintTicket(tok)
	th.mintTicket(th.token()) // another token of the same user shares the budget
	if code, body := th.status(http.MethodPost, th.ticketURL(), bearer(tok)); code != http.StatusTooManyRequests {
		t.Fatalf("3rd mint: %d %s, want 429", code, body)
	}
	th.mintTicket(th.token(claim("uuid", "user-2")))
}

func TestTicketExpires(t *testing.T) {
	tk := newTestTickets(t, time.Second)
	th := newTestHub(t, withTickets(tk))
	id := th.newTopology()
	code, body := th.status(http.MethodPost, th.ticketURL(), bearer(th.token()))
	var r ticketResponse
	if err := json.Unmarshal([]byte(body), &r); code != http.StatusOK || err != nil || r.ExpiresIn != 1 {
		t.Fatalf("mint: %d %s, want expires_in 1", code, body)
	}
	ctx := context.Background()
	if pttl := th.rdb.PTTL(ctx, tk.Key(r.Ticket)).Val(); pttl <= 0 || pttl > time.Second {
		t.Fatalf("ticket key TTL %s, want at most 1s", pttl)
	}
	waitFor(t, 10*time.Second, "ticket to expire", func() bool { return th.rdb.Exists(ctx, tk.Key(r.Ticket)).Val() == 0 })
	if code, body := th.status(http.MethodGet, th.sseURL(id)+"?ticket="+r.Ticket, nil); code != http.StatusUnauthorized {
		t.Fatalf("expired ticket: %d %s", code, body)
	}
}

func TestTicketSessionEndsAtTokenExp(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	ticket := th.mintTicket(th.token(claim("exp", time.Now().Add(3*time.Second).Unix())))
	s := th.openSSE(th.sseURL(id)+"?ticket="+ticket, nil)
	s.nextEvent()
	if !s.ended(10 * time.Second) {
		t.Fatal("the stream outlived the exp of the token its ticket was minted from")
	}
}

func TestTicketsDisabled(t *testing.T) {
	th := newTestHub(t)
	if code, body := th.status(http.MethodPost, th.ticketURL(), bearer(th.token())); code != http.StatusNotImplemented {
		t.Fatalf("%d %s, want 501", code, body)
	}
}

func TestRedisFailuresAre503(t *testing.T) {
	dead := deadRedisClient(t)
	wellFormed := strings.Repeat("A", 43)

	th := newTestHub(t, withTickets(busredis.NewTickets(dead, "", 0)))
	id := th.newTopology()
	if code, body := th.status(http.MethodPost, th.ticketURL(), bearer(th.token())); code != http.StatusServiceUnavailable {
		t.Errorf("mint with the ticket store down: %d %s", code, body)
	}
	if code, body := th.status(http.MethodGet, th.sseURL(id)+"?ticket="+wellFormed, nil); code != http.StatusServiceUnavailable {
		t.Errorf("redeem with the ticket store down: %d %s", code, body)
	}

	lim := newTestHub(t, withConfig(func(c *Config) { c.Limiter = busredis.NewLimiter(dead, busredis.LimiterConfig{Logger: quietLog}) }))
	id = lim.newTopology()
	if code, body := lim.status(http.MethodGet, lim.sseURL(id), bearer(lim.token())); code != http.StatusServiceUnavailable {
		t.Errorf("stream with the limiter down: %d %s", code, body)
	}

	rev := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) { c.Revocations = busredis.NewRevocations(dead, "") }))
	id = rev.newTopology()
	tok := rev.token(claim("jti", "j-1"))
	if code, body := rev.status(http.MethodGet, rev.sseURL(id), bearer(tok)); code != http.StatusServiceUnavailable {
		t.Errorf("stream with the revocation list down: %d %s", code, body)
	}
	if code, body := rev.status(http.MethodPost, rev.ticketURL(), bearer(tok)); code != http.StatusServiceUnavailable {
		t.Errorf("mint with the revocation list down: %d %s", code, body)
	}
}

// size returns how many buckets are held.
func (r *userRates) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}

func TestUserRatesBounded(t *testing.T) {
	now := time.Now()
	r := newUserRates(rate.Every(time.Minute), 2, 3)
	for range 2 {
		r.allow("hot", now)
	}
	if r.allow("hot", now) {
		t.Fatal("burst exceeded")
	}
	r.allow("a", now)
	r.allow("b", now)
	r.allow("c", now) // full table: the fullest bucket goes, not hot's
	if r.size() != 3 {
		t.Fatalf("%d buckets, want at most 3", r.size())
	}
	if r.allow("hot", now) {
		t.Fatal("an exhausted bucket was forgotten")
	}
	later := now.Add(10 * time.Minute) // every bucket has refilled
	r.allow("d", later)
	if r.size() != 1 {
		t.Fatalf("%d buckets after refill, want only the new one", r.size())
	}
}
