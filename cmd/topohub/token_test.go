package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"topohub/internal/redistest"
)

// TestTokenAcceptedByHub mints a token with `topohub token` from the same
// settings as a hub on a real Redis, and uses it as an operator would:
// a ticket, then a stream.
func TestTokenAcceptedByHub(t *testing.T) {
	prefix := redistest.UniqueID("tok") + ":"
	env := map[string]string{
		"TOPOHUB_REDIS_URL":    pkgRedis.URL,
		"TOPOHUB_JWT_SECRET":   strings.Repeat("s", 40),
		"TOPOHUB_KEY_PREFIX":   prefix,
		"TOPOHUB_JWT_AUDIENCE": "ops-console",
		"TOPOHUB_ROLE_CLAIM":   "roles",
	}
	rdb := pkgRedis.Client(t)
	if err := rdb.HSet(t.Context(), prefix+"topology:T1", "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	h := startHub(t, env)
	waitReady(t, h.url)

	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"token", "--user", "alice", "--role", "viewer", "--ttl", "1h"}, lookup(env), &out, &errOut); err != nil {
		t.Fatalf("token: %v (%s)", err, errOut.String())
	}
	tok := strings.TrimSpace(out.String())
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, claims); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"sub": "alice", "uuid": "alice", "iss": "decnet", "aud": "ops-console", "typ": "access", "roles": "viewer"} {
		if claims[k] != want {
			t.Errorf("claim %s = %v, want %v", k, claims[k], want)
		}
	}
	if exp, _ := claims.GetExpirationTime(); exp == nil || time.Until(exp.Time) < 59*time.Minute || time.Until(exp.Time) > time.Hour {
		t.Errorf("exp %v, want an hour from now", exp)
	}

	req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/auth/sse-ticket", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tr struct{ Ticket string }
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || tr.Ticket == "" {
		t.Fatalf("ticket: %d", resp.StatusCode)
	}
	resp, err = testClient.Get(h.url + "/api/v1/topologies/T1/events?ticket=" + tr.Ticket)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	buf := make([]byte, 0, 512)
	for !bytes.Contains(buf, []byte("event: snapshot")) {
		b := make([]byte, 256)
		n, err := resp.Body.Read(b)
		buf = append(buf, b[:n]...)
		if err != nil {
			t.Fatalf("stream ended before the snapshot: %v\n%s", err, buf)
		}
	}

	// A token for a role that may not stream is still printed, with a
	// warning, and the hub answers 403.
	out.Reset()
	errOut.Reset()
	if err := run(t.Context(), []string{"token", "-user", "bob", "-role", "intern"}, lookup(env), &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "403") {
		t.Errorf("no warning for a role that may not stream: %q", errOut.String())
	}
	req, _ = http.NewRequest(http.MethodGet, h.url+"/api/v1/topologies/T1/events", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(out.String()))
	resp, err = testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("intern stream: %d, want 403", resp.StatusCode)
	}
}

func TestTokenRefusals(t *testing.T) {
	env := map[string]string{"TOPOHUB_JWT_SECRET": strings.Repeat("s", 40)}
	for _, args := range [][]string{{"token"}, {"token", "-user", "u", "-ttl", "-1s"}, {"token", "-user", "u", "extra"}} {
		if err := run(t.Context(), args, lookup(env), io.Discard, io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	if err := run(t.Context(), []string{"token", "-user", "u"}, lookup(map[string]string{"TOPOHUB_JWT_SECRET": "short"}), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Errorf("short secret: %v", err)
	}
}

// TestHelpAndVersionExitZero runs the binary: -help and -version exit 0,
// a bad flag 2 or 1.
func TestHelpAndVersionExitZero(t *testing.T) {
	bin := hubBinary(t)
	for _, args := range [][]string{{"-help"}, {"-h"}, {"token", "-help"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "usage: topohub") || !strings.Contains(string(out), "TOPOHUB_JWT_SECRET") {
			t.Errorf("%v printed %s", args, out)
		}
	}
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "topohub ") || !strings.Contains(string(out), "go1.") {
		t.Errorf("-version: %v %q", err, out)
	}
	err = exec.Command(bin, "-no-such-flag").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Errorf("-no-such-flag: %v, want a non-zero exit", err)
	}
	if err := run(t.Context(), []string{"-help"}, lookup(nil), io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run -help: %v", err)
	}
}

// waitReady waits for /readyz 200.
func waitReady(t *testing.T, base string) {
	t.Helper()
	waitUntil(t, 10*time.Second, "/readyz 200", func() bool {
		resp, err := testClient.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
