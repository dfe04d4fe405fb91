package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"topohub/internal/redistest"
)

// TestLogsHoldNoCredentials runs a hub at debug level on a Redis URL with
// a password, and a scenario with a token, tickets (one spent twice), a
// bad token, a token in the query and a ticket in the path: the log
// names every refusal with its reason and holds none of the credentials.
func TestLogsHoldNoCredentials(t *testing.T) {
	const password = "pw-Zq81-never-logged"
	rdb := pkgRedis.Client(t)
	user := redistest.UniqueID("logcap")
	if err := rdb.Do(t.Context(), "acl", "setuser", user, "on", ">"+password, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Do(t.Context(), "acl", "deluser", user) })
	prefix := redistest.UniqueID("lc") + ":"
	if err := rdb.HSet(t.Context(), prefix+"topology:T", "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"TOPOHUB_REDIS_URL":  "redis://" + user + ":" + password + "@" + pkgRedis.Addr + "/0",
		"TOPOHUB_JWT_SECRET": strings.Repeat("q", 40),
		"TOPOHUB_KEY_PREFIX": prefix,
		"TOPOHUB_LOG_LEVEL":  "debug",
	}
	h := startHub(t, env)
	waitReady(t, h.url)

	var out bytes.Buffer
	if err := run(t.Context(), []string{"token", "-user", "carol"}, lookup(env), &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(out.String())
	badEnv := map[string]string{"TOPOHUB_JWT_SECRET": strings.Repeat("x", 40)}
	out.Reset()
	if err := run(t.Context(), []string{"token", "-user", "mallory"}, lookup(badEnv), &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	badTok := strings.TrimSpace(out.String())

	do := func(method, path, bearer string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, h.url+path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := do(http.MethodPost, "/api/v1/auth/sse-ticket", tok)
	var tr struct{ Ticket string }
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if tr.Ticket == "" {
		t.Fatalf("mint: %d", resp.StatusCode)
	}
	stream := do(http.MethodGet, "/api/v1/topologies/T/events?ticket="+tr.Ticket, "")
	if stream.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", stream.StatusCode)
	}
	for _, r := range []struct {
		method, path, bearer string
		want                 int
	}{
		{http.MethodGet, "/api/v1/topologies/T/events?ticket=" + tr.Ticket, "", http.StatusUnauthorized}, // spent
		{http.MethodGet, "/api/v1/topologies/T/events", badTok, http.StatusUnauthorized},
		{http.MethodGet, "/api/v1/topologies/T/events?token=" + tok, "", http.StatusUnauthorized},
		{http.MethodPost, "/api/v1/auth/sse-ticket", badTok, http.StatusUnauthorized},
		{http.MethodGet, "/api/v1/topologies/" + tr.Ticket + "/events", tok, http.StatusNotFound},
		{http.MethodGet, "/api/v1/ws?ticket=" + tr.Ticket, "", http.StatusUnauthorized},
		{http.MethodGet, "/healthz", "", http.StatusOK},
		{http.MethodGet, "/metrics", "", http.StatusOK},
	} {
		resp := do(r.method, r.path, r.bearer)
		resp.Body.Close()
		if resp.StatusCode != r.want {
			t.Errorf("%s %s: %d, want %d", r.method, r.path, resp.StatusCode, r.want)
		}
	}
	stream.Body.Close()
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	for name, secret := range map[string]string{"token": tok, "bad token": badTok, "ticket": tr.Ticket, "redis password": password,
		"token signature": tok[strings.LastIndexByte(tok, '.')+1:]} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds the %s", name)
		}
	}
	for _, want := range []string{
		`msg="handshake refused" transport=sse reason=unauthorized detail="ticket unknown, expired or already used"`,
		`msg="handshake refused" transport=sse reason=unauthorized detail="invalid token: bad signature or algorithm"`,
		`msg="handshake refused" transport=sse reason=unauthorized detail="tokens in the query string are refused`,
		`msg="handshake refused" transport=websocket reason=unauthorized`,
		`msg="ticket refused" reason=credentials`,
		`msg="handshake refused" transport=sse reason=not_found`,
		"password_set=true",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
	for _, probe := range []string{"/healthz", "/metrics", "/readyz"} {
		if regexp.MustCompile(`level=INFO msg="http request" method=GET path=` + probe + ` `).MatchString(logs) {
			t.Errorf("%s logged at INFO", probe)
		}
		if !regexp.MustCompile(`level=DEBUG msg="http request" method=GET path=` + probe + ` `).MatchString(logs) {
			t.Errorf("%s not logged at DEBUG", probe)
		}
	}
	if !regexp.MustCompile(`duration_ms=\d+(\.\d+)? `).MatchString(logs) || regexp.MustCompile(`duration=\d`).MatchString(logs) {
		t.Error("durations are not logged in milliseconds")
	}
	if t.Failed() {
		t.Logf("log:\n%s", logs)
	}
}
