package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"topohub/internal/redistest"
	"topohub/internal/testwait"
)

// hostileGrowthBound is the RSS growth docs/reliability.md promises for a
// producer flooding topologies nobody watches (TOPOHUB_MAX_HISTORY_BYTES
// bounds watched ones).
const hostileGrowthBound = 64 << 20

// buildHub builds the server binary without the race detector, so that
// its memory is the production figure.
func buildHub(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "topohub")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestHostileProducerCannotFillMemory publishes 1,000 bodies of 1 MB to
// 1,000 distinct topology ids that nobody subscribes to, through a real
// Redis into the real binary: the hub keeps none of them, and its RSS
// stays within hostileGrowthBound of where it started.
func TestHostileProducerCannotFillMemory(t *testing.T) {
	rds := redistest.Start(t)
	rdb := rds.Client(t)
	ctx := context.Background()
	// The hub reads as fast as it can; the publisher below waits for it,
	// so this only spares a slow run a disconnect by Redis.
	_ = rdb.ConfigSet(ctx, "client-output-buffer-limit", "pubsub 256mb 128mb 60").Err()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(buildHub(t))
	cmd.Env = append(cleanEnv(),
		"TOPOHUB_ADDR="+addr,
		"TOPOHUB_REDIS_URL=redis://"+rds.Options().Addr,
		"TOPOHUB_JWT_SECRET="+strings.Repeat("k", 32),
		"TOPOHUB_KEY_PREFIX="+redistest.UniqueID("mem")+":",
	)
	var stderr strings.Builder
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	base := "http://" + addr
	metric := func(name string) float64 {
		t.Helper()
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatalf("metrics: %v\n%s", err, stderr.String())
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		t.Fatalf("metric %s not exported", name)
		return 0
	}
	waitFor(t, 20*time.Second, "the hub ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	rss := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return kb << 10
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	start := rss()

	body := `{"payload":{"pad":"` + strings.Repeat("x", 1_000_000-len(`{"payload":{"pad":""}}`)) + `"}}`
	const ids, batch = 1000, 25
	peak := start
	for sent := 0; sent < ids; {
		pipe := rdb.Pipeline()
		for range batch {
			pipe.Publish(ctx, fmt.Sprintf("topology.ghost-%d.status", sent), body)
			sent++
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "the hub to read the batch", func() bool {
			return metric("topohub_events_unwatched_total") >= float64(sent)
		})
		peak = max(peak, rss())
	}
	if n, b := metric("topohub_topologies"), metric("topohub_history_bytes"); n != 0 || b != 0 {
		t.Fatalf("the hub keeps %v topologies and %v history bytes for topologies nobody watches", n, b)
	}
	t.Logf("RSS %d MiB at start, %d MiB at peak, after 1,000 x 1 MB to unwatched topologies", start>>20, peak>>20)
	if peak-start > hostileGrowthBound {
		t.Fatalf("RSS grew by %d MiB, over the documented %d MiB", (peak-start)>>20, hostileGrowthBound>>20)
	}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, d, what, cond)
}
