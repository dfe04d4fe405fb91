package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"topohub/internal/redistest"
)

// pkgRedis is the redis-server shared by this package's tests.
var pkgRedis *redistest.Server

func TestMain(m *testing.M) {
	code := redistest.RunMain(m, &pkgRedis)
	if bin, err := hubBinary(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

const testSecret = "0123456789abcdef0123456789abcdef-bench"

// hubBinary builds cmd/topohub once per test binary.
var hubBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "topohub-bench-test-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "topohub")
	out, err := exec.Command("go", "build", "-o", bin, "topohub/cmd/topohub").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build topohub: %v\n%s", err, out)
	}
	return bin, nil
})

// runningHub is a topohub process serving on loopback.
type runningHub struct {
	url    string
	pid    int
	prefix string
	stderr *lockedWriter
}

// startHub runs the real hub binary against the package's Redis, as a
// deployment would, and waits until /readyz answers 200.
func startHub(t *testing.T) *runningHub {
	t.Helper()
	bin, err := hubBinary()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	h := &runningHub{url: "http://" + addr, prefix: redistest.UniqueID("b") + ":", stderr: &lockedWriter{}}
	cmd := exec.Command(bin)
	cmd.Env = append(cleanEnv(),
		"TOPOHUB_ADDR="+addr,
		"TOPOHUB_REDIS_URL="+pkgRedis.URL,
		"TOPOHUB_JWT_SECRET="+testSecret,
		"TOPOHUB_KEY_PREFIX="+h.prefix,
		"TOPOHUB_LOG_FORMAT=json",
	)
	cmd.Stdout, cmd.Stderr = nil, h.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.pid = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(h.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return h
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("hub exited at start: %v\n%s", err, h.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub not ready within 20s: %v\n%s", err, h.stderr)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// cleanEnv is the test's environment without TOPOHUB_* settings.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOPOHUB_") {
			out = append(out, kv)
		}
	}
	return out
}

// lockedWriter collects the hub's log; String may be called while the
// process writes.
type lockedWriter struct {
	mu sync.Mutex
	w  bytes.Buffer
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestAgainstRealHub runs the tool end to end: 20 WebSocket and 5 SSE
// clients on both of 2 topologies, 200 events/s for 2 s, plus a flood of
// unroutable decky traffic the hub must drop.
func TestAgainstRealHub(t *testing.T) {
	h := startHub(t)
	var stdout, stderr bytes.Buffer
	args := []string{
		"--hub", h.url, "--redis", pkgRedis.URL, "--prefix", h.prefix, "--secret", testSecret,
		"--ws", "20", "--sse", "5", "--per-client", "2", "--topologies", "2",
		"--rate", "200", "--duration", "2s", "--flood-rate", "100", "--idle", "300ms", "--drain", "5s",
		"--connect-concurrency", "8", "--source-ips", "4", "--pid", strconv.Itoa(h.pid), "--fail-on-loss",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s\nhub:\n%s", err, &stderr, h.stderr)
	}
	t.Logf("summary:%s", stderr.String()[strings.LastIndex(stderr.String(), "\ntopohub-bench run"):])
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("stdout has %d lines, want one JSON line:\n%s", len(lines), &stdout)
	}
	var r report
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, lines[0])
	}
	const clients, subscribers = 25, 25 // every client follows both topologies
	if r.ConnectedClients != clients || r.Connections != 20+5*2 || r.Subscriptions != clients*2 {
		t.Errorf("connected %d clients, %d connections, %d subscriptions", r.ConnectedClients, r.Connections, r.Subscriptions)
	}
	if r.Published < 350 || r.Published > 400 {
		t.Errorf("published %d, want about 400 (200/s for 2 s)", r.Published)
	}
	if r.Delivered != r.Published*subscribers || r.Expected != r.Delivered {
		t.Errorf("delivered %d, expected %d, want published x subscribers = %d", r.Delivered, r.Expected, r.Published*subscribers)
	}
	if r.LostUncovered != 0 || r.Lost != 0 || r.Duplicates != 0 || r.Unexpected != 0 {
		t.Errorf("lost %d (uncovered %d), duplicates %d, unexpected %d", r.Lost, r.LostUncovered, r.Duplicates, r.Unexpected)
	}
	if r.ClientsCurrent != clients || r.AllCurrentMS == nil || r.Disconnected != 0 {
		t.Errorf("clients current %d, all current after %v ms, disconnected %d", r.ClientsCurrent, r.AllCurrentMS, r.Disconnected)
	}
	if r.FloodPublished < 150 || r.FloodDelivered != 0 {
		t.Errorf("flood published %d delivered %d, want about 200 and none delivered", r.FloodPublished, r.FloodDelivered)
	}
	for name, v := range map[string]*float64{"p50": r.LatencyP50MS, "p90": r.LatencyP90MS, "p99": r.LatencyP99MS, "max": r.LatencyMaxMS} {
		if v == nil || *v < 0 || *v > 5000 {
			t.Errorf("latency %s = %v", name, v)
		}
	}
	if r.HandshakeP50MS <= 0 || r.HandshakeP99MS < r.HandshakeP50MS || r.ConnectRate <= 0 {
		t.Errorf("handshake p50 %v p99 %v, connect rate %v", r.HandshakeP50MS, r.HandshakeP99MS, r.ConnectRate)
	}
	if r.RSSBeforeKiB == nil || *r.RSSBeforeKiB <= 0 || r.RSSPerConnKiB == nil || r.CPUIdlePct == nil || r.CPUPublishPct == nil {
		t.Errorf("hub figures missing: rss %v per conn %v cpu idle %v publish %v", r.RSSBeforeKiB, r.RSSPerConnKiB, r.CPUIdlePct, r.CPUPublishPct)
	}
	if r.Errors != 0 {
		t.Errorf("errors %d: %v", r.Errors, r.ErrorCounts)
	}
	// The run's topologies are gone from Redis.
	n, err := pkgRedis.Client(t).Exists(context.Background(), topologyKey(h.prefix, "bench-"+r.RunID+"-0")).Result()
	if err != nil || n != 0 {
		t.Errorf("topology left in Redis: %d %v", n, err)
	}
	if strings.Contains(stderr.String(), testSecret) {
		t.Error("the secret appears in the logs")
	}
}

// TestSetupFailures: a bad flag set, an unreachable hub and a wrong
// prefix (every subscribe not_found) are errors, not reports.
func TestSetupFailures(t *testing.T) {
	t.Setenv("TOPOHUB_JWT_SECRET", "")
	t.Setenv("TOPOHUB_BENCH_TOKEN", "")
	ctx := context.Background()
	var out bytes.Buffer
	if err := run(ctx, []string{"--ws", "1"}, &out, &out); err == nil || !strings.Contains(err.Error(), "--secret") {
		t.Errorf("no credentials: %v", err)
	}
	if err := run(ctx, []string{"--per-client", "3", "--topologies", "2", "--secret", testSecret}, &out, &out); err == nil {
		t.Error("per-client above topologies accepted")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	if err := run(ctx, []string{"--hub", dead, "--redis", pkgRedis.URL, "--secret", testSecret}, &out, &out); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("dead hub: %v", err)
	}
	h := startHub(t)
	out.Reset()
	err = run(ctx, []string{"--hub", h.url, "--redis", pkgRedis.URL, "--prefix", "wrong:", "--secret", testSecret, "--ws", "2", "--idle", "0s", "--duration", "100ms"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "ws_error_not_found") {
		t.Errorf("wrong prefix: %v\n%s", err, &out)
	}
	if strings.Contains(out.String(), "{\"run_id\"") {
		t.Error("a failed setup printed a report")
	}
}

// cancelOn calls cancel once the text written to it contains marker.
type cancelOn struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if strings.Contains(c.buf.String(), c.marker) {
		c.cancel()
	}
	return len(p), nil
}

// TestInterrupted: SIGINT (a cancelled context) in the middle of a long
// publish phase still closes every client, reports, and returns promptly.
func TestInterrupted(t *testing.T) {
	h := startHub(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &cancelOn{marker: "msg=connected", cancel: cancel}
	var stdout bytes.Buffer
	start := time.Now()
	err := run(ctx, []string{"--hub", h.url, "--redis", pkgRedis.URL, "--prefix", h.prefix, "--secret", testSecret,
		"--ws", "5", "--sse", "2", "--topologies", "3", "--idle", "0s", "--duration", "60s", "--drain", "30s"}, &stdout, stderr)
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("err = %v, want the cancellation", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("run took %s after the interrupt", d)
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil || !r.Interrupted || r.ConnectedClients != 7 {
		t.Errorf("report %v: %s", err, &stdout)
	}
}
