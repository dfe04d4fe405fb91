package handlers

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
)

// clientFrom is an HTTP client whose connections leave from the loopback
// address src (Linux routes all of 127/8 locally), so a test can be an
// untrusted peer of a hub that trusts 127.0.0.1.
func clientFrom(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}}
}

func send(t *testing.T, cl *http.Client, method, url string, h http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestTrustedProxiesOnly(t *testing.T) {
	var logs syncBuffer
	th := newTestHub(t, withConfig(func(c *Config) {
		c.TrustedProxies = []string{"127.0.0.1"}
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})) // health checks log at debug
	}))
	trusted, untrusted := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	forged := http.Header{"X-Forwarded-For": {"6.6.6.6"}}
	send(t, untrusted, http.MethodGet, th.http.URL+"/healthz?from=untrusted", forged)
	send(t, trusted, http.MethodGet, th.http.URL+"/healthz", http.Header{"X-Forwarded-For": {"203.0.113.7"}})
	send(t, trusted, http.MethodGet, th.http.URL+"/readyz", http.Header{"Forwarded": {`for="198.51.100.9:4711";host=hub.example.com;proto=https`}})
	waitFor(t, 5e9, "three access log lines", func() bool { return strings.Count(logs.String(), `"msg":"http request"`) >= 3 })
	out := logs.String()
	if strings.Contains(out, "6.6.6.6") || !strings.Contains(out, `"remote":"127.0.0.2"`) {
		t.Errorf("an untrusted peer's X-Forwarded-For was believed, or its address not logged:\n%s", out)
	}
	if !strings.Contains(out, `"remote":"203.0.113.7"`) || !strings.Contains(out, `"remote":"198.51.100.9"`) {
		t.Errorf("a trusted proxy's X-Forwarded-For or Forwarded for= was not believed:\n%s", out)
	}

	// The WebSocket same-origin check uses the public host the trusted
	// proxy gives, and only its. 401 (no credentials) means the origin
	// passed: it is checked first.
	public := http.Header{"Origin": {"https://hub.example.com:8443"}, "X-Forwarded-Host": {"hub.example.com:8443"}, "X-Forwarded-Proto": {"https"}}
	if r := send(t, trusted, http.MethodGet, th.http.URL+"/api/v1/ws", public); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("origin of the trusted proxy's public host: %d, want 401 (origin accepted)", r.StatusCode)
	}
	if r := send(t, untrusted, http.MethodGet, th.http.URL+"/api/v1/ws", public); r.StatusCode != http.StatusForbidden {
		t.Errorf("X-Forwarded-Host from an untrusted peer: %d, want 403", r.StatusCode)
	}
	viaForwarded := http.Header{"Origin": {"https://hub.example.com"}, "Forwarded": {`host="hub.example.com";proto=https`}}
	if r := send(t, trusted, http.MethodGet, th.http.URL+"/api/v1/ws", viaForwarded); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("Forwarded host= of a trusted proxy: %d, want 401 (origin accepted)", r.StatusCode)
	}

	// Nobody is trusted by default.
	var logs2 syncBuffer
	th2 := newTestHub(t, withConfig(func(c *Config) { c.Logger = slog.New(slog.NewJSONHandler(&logs2, nil)) }))
	send(t, trusted, http.MethodGet, th2.http.URL+"/healthz", forged)
	if r := send(t, trusted, http.MethodGet, th2.http.URL+"/api/v1/ws", public); r.StatusCode != http.StatusForbidden {
		t.Errorf("X-Forwarded-Host with no trusted proxies: %d, want 403", r.StatusCode)
	}
	waitFor(t, 5e9, "access log", func() bool { return strings.Contains(logs2.String(), `"msg":"http request"`) })
	if strings.Contains(logs2.String(), "6.6.6.6") {
		t.Errorf("X-Forwarded-For believed with no trusted proxies:\n%s", logs2.String())
	}
}

func TestTrustedProxiesRefusesTypos(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "localhost", "10.0.0"} {
		if _, err := parseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCORS(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) {
		c.CORSOrigins = []string{"https://dash.example.com", "*.corp.example"}
	}))
	id := th.newTopology()
	cl := noKeepAlive
	pre := func(origin, url string) *http.Response {
		return send(t, cl, http.MethodOptions, url, http.Header{
			"Origin": {origin}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"authorization"},
		})
	}
	for _, url := range []string{th.ticketURL(), th.sseURL(id), th.http.URL + "/topohub.js"} {
		r := pre("https://dash.example.com", url)
		if r.StatusCode != http.StatusNoContent || r.Header.Get("Access-Control-Allow-Origin") != "https://dash.example.com" ||
			r.Header.Get("Access-Control-Allow-Credentials") != "true" || !strings.Contains(r.Header.Get("Access-Control-Allow-Headers"), "Authorization") ||
			!strings.Contains(r.Header.Get("Vary"), "Origin") {
			t.Errorf("preflight of %s from a listed origin: %d %v", url, r.StatusCode, r.Header)
		}
		if r := pre("http://other.example", url); r.StatusCode != http.StatusForbidden || r.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight of %s from an unlisted origin: %d %v", url, r.StatusCode, r.Header)
		}
	}
	if r := pre("https://a.corp.example", th.ticketURL()); r.Header.Get("Access-Control-Allow-Origin") != "https://a.corp.example" {
		t.Errorf("wildcard host pattern: %v", r.Header)
	}

	// Actual requests.
	h := bearer(th.token())
	h.Set("Origin", "https://dash.example.com")
	if r := send(t, cl, http.MethodPost, th.ticketURL(), h); r.StatusCode != http.StatusOK || r.Header.Get("Access-Control-Allow-Origin") != "https://dash.example.com" {
		t.Errorf("ticket from a listed origin: %d %v", r.StatusCode, r.Header)
	}
	h.Set("Origin", "http://other.example")
	if r := send(t, cl, http.MethodPost, th.ticketURL(), h); r.StatusCode != http.StatusForbidden {
		t.Errorf("ticket from an unlisted origin: %d, want 403", r.StatusCode)
	}
	// An unlisted origin's SSE request is refused before its ticket is read.
	ticket := th.mintTicket(th.token())
	if r := send(t, cl, http.MethodGet, th.sseURL(id)+"?ticket="+ticket, http.Header{"Origin": {"http://other.example"}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("SSE from an unlisted origin: %d, want 403", r.StatusCode)
	}
	m := th.scrape()
	if got := m[`topohub_handshakes_refused_total{reason="origin",transport="sse"}`]; got != 1 {
		t.Errorf("SSE origin refusals counted %v, want 1", got)
	}
	if got := m[`topohub_tickets_refused_total{reason="origin"}`]; got != 1 {
		t.Errorf("ticket origin refusals counted %v, want 1", got)
	}
	s := th.openSSE(th.sseURL(id)+"?ticket="+ticket, http.Header{"Origin": {"https://dash.example.com"}})
	if got := s.resp.Header.Get("Access-Control-Allow-Origin"); got != "https://dash.example.com" || s.resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("SSE stream's CORS headers: %v", s.resp.Header)
	}
	if r := send(t, cl, http.MethodGet, th.http.URL+"/topohub.js", http.Header{"Origin": {"http://other.example"}}); r.StatusCode != http.StatusOK || r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("library to an unlisted origin: %d %v, want 200 without CORS headers", r.StatusCode, r.Header)
	}
	// Same origin needs no list.
	if r := send(t, cl, http.MethodPost, th.ticketURL(), http.Header{"Origin": {th.http.URL}, "Authorization": {"Bearer " + th.token()}}); r.StatusCode != http.StatusOK {
		t.Errorf("same-origin ticket: %d", r.StatusCode)
	}
	// A CORS origin may open the WebSocket (401: the origin passed).
	if r := send(t, cl, http.MethodGet, th.http.URL+"/api/v1/ws", http.Header{"Origin": {"https://dash.example.com"}}); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("WebSocket from a CORS origin: %d, want 401", r.StatusCode)
	}
}
