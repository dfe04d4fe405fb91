package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"topohub/internal/redistest"
)

// pkgRedis is the redis-server of this package's tests that need a real
// Redis; each uses its own key prefix.
var pkgRedis *redistest.Server

func TestMain(m *testing.M) {
	code := redistest.RunMain(m, &pkgRedis)
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// logBuffer collects a hub's log lines; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runningHub is run() in this process, against a real Redis.
type runningHub struct {
	url  string
	logs *logBuffer
	stop func() error // cancels run's context (as SIGTERM would) and waits
}

var listeningURL = regexp.MustCompile(`msg="topohub listening" url=(\S+)`)

// startHub runs run() with env (plus a free loopback address and the text
// log format) and waits until it listens.
func startHub(t *testing.T, env map[string]string) *runningHub {
	t.Helper()
	full := map[string]string{"TOPOHUB_ADDR": "127.0.0.1:0", "TOPOHUB_LOG_FORMAT": "text", "TOPOHUB_DRAIN_WINDOW": "10ms"}
	for k, v := range env {
		full[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &logBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, lookup(full), &logBuffer{}, logs) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				t.Error("run did not return within 20 s of its context ending")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	h := &runningHub{logs: logs, stop: stop}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := listeningURL.FindStringSubmatch(logs.String()); m != nil {
			h.url = m[1]
			return h
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("run returned before listening: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub not listening after 10 s:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binOut  []byte
)

// hubBinary builds cmd/topohub once per test run.
func hubBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "topohub-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "topohub")
		binOut, binErr = exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	})
	if binErr != nil {
		t.Fatalf("go build: %v\n%s", binErr, binOut)
	}
	return binPath
}

// testClient keeps no idle connections, which goleak would report.
var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
