package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"topohub/internal/redistest"
)

// TestRunOnACluster runs the real run() on a redis+cluster:// URL: the
// cluster client, its autopipeliners and the cluster subscription are
// wired: /readyz says the bus is up, a ticket is minted and redeemed, a
// snapshot is read (through the autopipeliner, two slots) and an event
// published on another node is delivered.
func TestRunOnACluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	secret := strings.Repeat("k", 32)
	env := map[string]string{
		"TOPOHUB_REDIS_URL": cl.URL(), "TOPOHUB_JWT_SECRET": secret,
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

	bg := context.Background()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{cl.Nodes[0].Addr}})
	defer rdb.Close()
	if err := rdb.HSet(bg, "topohub:topology:c1", "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(bg, "topohub:topology:c1:mutations", "m1", `{"id":"m1","topology_id":"c1","op":"add_decky","payload":{},"state":"pending","requested_at":"2026-11-28T10:00:00+00:00","applied_at":null,"reason":null}`).Err(); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"uuid": "u1", "sub": "u1", "role": "viewer", "typ": "access", "iss": "decnet", "aud": "decnet-dashboard",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/auth/sse-ticket", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tk struct{ Ticket string }
	err = json.NewDecoder(resp.Body).Decode(&tk)
	resp.Body.Close()
	if err != nil || tk.Ticket == "" {
		t.Fatalf("mint: %d %v", resp.StatusCode, err)
	}
	stream := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	sctx, scancel := context.WithTimeout(bg, 20*time.Second)
	defer scancel()
	sreq, _ := http.NewRequestWithContext(sctx, http.MethodGet, "http://"+addr+"/api/v1/topologies/c1/events?ticket="+tk.Ticket, nil)
	sresp, err := stream.Do(sreq)
	if err != nil || sresp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v %v", sresp, err)
	}
	defer sresp.Body.Close()
	r := bufio.NewReader(sresp.Body)
	next := func(prefix string) string {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended waiting for %q: %v", prefix, err)
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		}
	}
	if d := next("data: "); !strings.Contains(d, `"status":"active"`) || !strings.Contains(d, `"m1"`) {
		t.Fatalf("snapshot %s", d)
	}
	if err := cl.Nodes[5].Client(t).Publish(bg, "topology.c1.status", `{"payload":{"state":"degraded"}}`).Err(); err != nil {
		t.Fatal(err)
	}
	if d := next("data: "); !strings.Contains(d, `"degraded"`) {
		t.Fatalf("event %s", d)
	}
	scancel()
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
