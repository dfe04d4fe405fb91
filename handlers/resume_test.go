package handlers

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// resumeCookieOf returns the resume cookie an SSE response set.
func resumeCookieOf(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == ResumeCookie {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", ResumeCookie, resp.Header["Set-Cookie"])
	return nil
}

func TestResumeCookie(t *testing.T) {
	tickets := newTestTickets(t, 0)
	a := newTestHub(t, withTickets(tickets))
	b := newTestHub(t, withTickets(tickets), withPrefix(a.prefix)) // another instance
	id, other := a.newTopology(), a.newTopology()
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	ticket := a.mintTicket(a.token(claim("exp", exp.Unix())))
	url := a.sseURL(id) + "?ticket=" + ticket

	s := a.openSSE(url, nil)
	ck := resumeCookieOf(t, s.resp)
	if !ck.HttpOnly || ck.Path != "/api/v1/topologies/"+id+"/events" || ck.Secure || ck.SameSite != http.SameSiteLaxMode {
		t.Errorf("cookie attributes: %+v", ck)
	}
	if d := ck.Expires.Sub(exp); d < -time.Second || d > time.Second {
		t.Errorf("cookie expires %v, the session at %v", ck.Expires, exp)
	}
	s.Close()

	withCookie := func(v string) http.Header { return http.Header{"Cookie": {ResumeCookie + "=" + v}} }
	// The spent ticket plus the cookie: let back in, by any instance, with
	// the same session end (a fresh cookie to the same second).
	for _, th := range []*testHub{a, b} {
		s := th.openSSE(th.sseURL(id)+"?ticket="+ticket, withCookie(ck.Value))
		if again := resumeCookieOf(t, s.resp); again.Expires.Unix() != ck.Expires.Unix() {
			t.Errorf("resume moved the session's end: %v -> %v", ck.Expires, again.Expires)
		}
		s.Close()
	}
	// No credentials at all but the cookie: also let in.
	a.openSSE(a.sseURL(id), withCookie(ck.Value)).Close()

	refused := map[string]struct {
		url string
		h   http.Header
	}{
		"spent ticket, no cookie":   {url, nil},
		"cookie of another stream":  {a.sseURL(other) + "?ticket=" + ticket, withCookie(ck.Value)},
		"tampered cookie":           {url, withCookie(strings.Replace(ck.Value, "v1.", "v1.e", 1))},
		"bad bearer with a cookie":  {a.sseURL(id), http.Header{"Cookie": {ResumeCookie + "=" + ck.Value}, "Authorization": {"Bearer nope"}}},
		"cookie of another secret":  {url, withCookie(otherSecretCookie(t, id))},
		"cookie with ?token= (off)": {a.sseURL(id) + "?token=x", withCookie(ck.Value)},
	}
	for name, c := range refused {
		code, body := a.status(http.MethodGet, c.url, c.h)
		if code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", name, code, body)
		}
		if strings.Contains(body, ck.Value) {
			t.Errorf("%s: the body echoes the cookie", name)
		}
	}

	// An expired session's cookie is refused even though its MAC is good.
	old := a.srv.auth.mintResume(Principal{User: "user-1", Role: "viewer", Expires: time.Now().Add(-time.Second)}, id)
	if code, _ := a.status(http.MethodGet, url, withCookie(old)); code != http.StatusUnauthorized {
		t.Errorf("expired cookie: %d, want 401", code)
	}
	// A cookie is not a token.
	if code, _ := a.status(http.MethodGet, a.sseURL(id), bearer(ck.Value)); code != http.StatusUnauthorized {
		t.Errorf("cookie as a bearer token: %d, want 401", code)
	}
}

func TestResumeCookieRevoked(t *testing.T) {
	revs := newTestRevocations(t)
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withRevocations(revs))
	id := th.newTopology()
	ticket := th.mintTicket(th.token(claim("jti", "jti-resume")))
	s := th.openSSE(th.sseURL(id)+"?ticket="+ticket, nil)
	ck := resumeCookieOf(t, s.resp)
	s.Close()
	if err := revs.Revoke(context.Background(), "jti-resume"); err != nil {
		t.Fatal(err)
	}
	if code, _ := th.status(http.MethodGet, th.sseURL(id)+"?ticket="+ticket, http.Header{"Cookie": {ResumeCookie + "=" + ck.Value}}); code != http.StatusUnauthorized {
		t.Errorf("revoked session's cookie: %d, want 401", code)
	}
}

func otherSecretCookie(t *testing.T, id string) string {
	a, err := NewAuthenticator(AuthConfig{Secret: []byte(strings.Repeat("x", 40))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a.mintResume(Principal{User: "user-1", Role: "viewer", Expires: time.Now().Add(time.Hour)}, id)
}

func TestResumeCookieSecureBehindTLSProxy(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) { c.TrustedProxies = []string{"127.0.0.1/32"} }))
	id := th.newTopology()
	h := bearer(th.token())
	h.Set("X-Forwarded-Proto", "https")
	ck := resumeCookieOf(t, th.openSSE(th.sseURL(id), h).resp)
	if !ck.Secure || ck.SameSite != http.SameSiteNoneMode || !ck.HttpOnly {
		t.Errorf("behind a trusted TLS proxy: %+v, want Secure, SameSite=None, HttpOnly", ck)
	}
	// The same header from an untrusted peer changes nothing.
	req, _ := http.NewRequest(http.MethodGet, th.sseURL(id), nil)
	req.Header = h
	resp, err := clientFrom("127.0.0.2").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ck := resumeCookieOf(t, resp); ck.Secure {
		t.Errorf("X-Forwarded-Proto of an untrusted peer believed: %+v", ck)
	}
}
