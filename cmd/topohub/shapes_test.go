package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"topohub/internal/redistest"
)

// TestRunOnACluster runs the real run() on a redis+cluster:// URL: the
// cluster client, its autopipeliners and the cluster subscription are
// wired, and /readyz says the bus is up.
func TestRunOnACluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	env := map[string]string{
		"TOPOHUB_REDIS_URL": cl.URL(), "TOPOHUB_JWT_SECRET": strings.Repeat("k", 32),
		"TOPOHUB_ADDR": addr, "TOPOHUB_DRAIN_WINDOW": "10ms",
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, lookup(env), io.Discard, io.Discard) }()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if !redistest.WaitFor(15*time.Second, func() bool {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatal("/readyz never answered 200 on a cluster")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return")
	}
}
