package main

import (
	"bufio"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestBadRedis runs the real binary against three broken Redis settings:
// each must log, repeatedly and without the password, what is wrong,
// answer /readyz 503 meanwhile, and exit 0 within the drain window plus
// the 5 s grace of SIGTERM.
func TestBadRedis(t *testing.T) {
	bin := hubBinary(t)
	_, port, _ := net.SplitHostPort(pkgRedis.Addr)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there now
	const password = "hunter2-not-logged"
	cases := []struct{ name, url, problem string }{
		{"refused", "redis://:" + password + "@" + closed + "/0", `problem="connection refused"`},
		{"tls-to-plain", "rediss://:" + password + "@127.0.0.1:" + port + "/0", `problem="TLS mismatch`},
		{"wrong-password", "redis://nobody:" + password + "@127.0.0.1:" + port + "/0", `problem="authentication failed"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(bin)
			cmd.Env = append(cleanEnv(), "TOPOHUB_ADDR=127.0.0.1:0", "TOPOHUB_REDIS_URL="+tc.url,
				"TOPOHUB_JWT_SECRET="+strings.Repeat("k", 40), "TOPOHUB_DRAIN_WINDOW=1s")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			var mu sync.Mutex
			var logs strings.Builder
			go func() {
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					mu.Lock()
					logs.WriteString(sc.Text() + "\n")
					mu.Unlock()
				}
				exited <- cmd.Wait()
			}()
			t.Cleanup(func() { _ = cmd.Process.Kill() })
			logged := func() string { mu.Lock(); defer mu.Unlock(); return logs.String() }

			waitUntil(t, 15*time.Second, "the problem logged twice", func() bool {
				return strings.Count(logged(), tc.problem) >= 2
			})
			m := regexp.MustCompile(`url=(\S+)`).FindStringSubmatch(logged())
			if m == nil {
				t.Fatalf("no listening line:\n%s", logged())
			}
			resp, err := testClient.Get(m[1] + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("/readyz %d, want 503 while Redis is unusable", resp.StatusCode)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			signalled := time.Now()
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("exit: %v", err)
				}
			case <-time.After(time.Second + shutdownGrace):
				t.Fatalf("still running %v after SIGTERM:\n%s", time.Second+shutdownGrace, logged())
			}
			t.Logf("exited %v after SIGTERM", time.Since(signalled).Round(time.Millisecond))
			if strings.Contains(logged(), password) {
				t.Errorf("the password appears in the log:\n%s", logged())
			}
		})
	}
}
