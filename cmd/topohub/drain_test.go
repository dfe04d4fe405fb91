package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrainsBeforeClosing runs the real run() and sends it
// SIGTERM with a stream open: /readyz must answer 503 first, new streams
// 503 with Retry-After during the drain window while the open stream
// carries on, and only then is the stream ended and run returns nil.
func TestSIGTERMDrainsBeforeClosing(t *testing.T) {
	const window = 3 * time.Second
	env := map[string]string{"TOPOHUB_ADDR": "127.0.0.1:0", "TOPOHUB_DRAIN_WINDOW": window.String()}
	out, stdout := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(context.Background(), nil, lookup(env), stdout, io.Discard)
		stdout.Close()
		done <- err
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("run still running at the end of the test")
		}
	})

	printed := map[string]string{}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for printed["stream"] == "" && sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && !strings.HasPrefix(sc.Text(), " ") {
			printed[k] = strings.TrimSpace(v)
		}
	}
	go io.Copy(io.Discard, out)
	hubURL, token := printed["hub"], printed["token"]
	if hubURL == "" || token == "" {
		t.Fatalf("printed %v", printed)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string, auth bool) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hubURL+path, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp
	}
	readyz := func() int {
		resp := get("/readyz", false)
		resp.Body.Close()
		return resp.StatusCode
	}
	waitUntil(t, 10*time.Second, "ready", func() bool { return readyz() == http.StatusOK })

	stream := get("/api/v1/topologies/demo/events", true)
	if stream.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", stream.StatusCode)
	}
	var ended atomic.Bool
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		_, _ = io.Copy(io.Discard, stream.Body)
		ended.Store(true)
	}()

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	waitUntil(t, window, "/readyz 503 after SIGTERM", func() bool { return readyz() == http.StatusServiceUnavailable })
	resp := get("/api/v1/topologies/demo/events", true)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("new stream while draining: %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if ended.Load() {
		t.Fatal("the open stream ended before the drain window did")
	}
	if time.Since(signalled) >= window {
		t.Fatal("the checks above took longer than the drain window; the test proves nothing on this machine")
	}

	select {
	case <-streamDone:
	case <-time.After(window + shutdownGrace + 5*time.Second):
		t.Fatal("the open stream was not ended after the drain window")
	}
	if took := time.Since(signalled); took < window {
		t.Errorf("the stream ended %v after SIGTERM, within the %v drain window", took, window)
	}
	select {
	case err := <-done:
		done <- err // for Cleanup
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(shutdownGrace + 5*time.Second):
		t.Fatal("run did not return after the drain")
	}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}
