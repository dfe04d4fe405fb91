// Package redistest runs a real redis-server child process for tests: one
// per test package on a free loopback port, or the server named by
// TOPOHUB_TEST_REDIS_URL. It is for tests only.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// EnvURL names an existing Redis to use instead of starting one.
const EnvURL = "TOPOHUB_TEST_REDIS_URL"

// Server is a redis-server for tests.
type Server struct {
	URL      string
	Addr     string
	external bool
	durable  bool
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{}
}

// Start runs a fresh redis-server on a free port (or uses EnvURL) and
// stops it when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := start(false)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// StartDurable is Start for a server whose data must survive Kill and
// Restart: it writes an append-only file synced on every write.
func StartDurable(tb testing.TB) *Server {
	tb.Helper()
	if os.Getenv(EnvURL) != "" {
		tb.Skip("redistest: a durable server to kill cannot be the external " + EnvURL)
	}
	s, err := start(true)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// StartMain is Start for TestMain: the caller stops the server.
func StartMain() (*Server, error) { return start(false) }

// RunMain is a test package's TestMain: it starts the package's server
// into *srv, runs the tests, stops the server and, when the tests passed,
// fails the run on leaked goroutines. Use: os.Exit(redistest.RunMain(m, &pkgRedis)).
//
// The leak check is retried for up to 5 s: after failed dials (tests that
// kill Redis) a go-redis pool probes in a goroutine that sleeps a second
// between attempts and only sees its pool closed when it wakes, later
// than goleak's own retries wait.
func RunMain(m *testing.M, srv **Server) int {
	s, err := start(false)
	if err != nil {
		fmt.Fprintln(os.Stderr, "redistest:", err)
		return 1
	}
	*srv = s
	code := m.Run()
	s.Stop()
	if code != 0 {
		return code
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find()
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

func start(durable bool) (*Server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvURL, err)
		}
		return &Server{URL: u, Addr: opts.Addr, external: true}, nil
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is not installed (apt-get install redis-server, or set %s): %w", EnvURL, err)
	}
	dir, err := os.MkdirTemp("", "topohub-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, durable: durable}
		s.URL = "redis://" + s.Addr
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) launch() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	aof := []string{"--appendonly", "no"}
	if s.durable {
		aof = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	args := append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", s.dir, "--logfile", ""}, aof...)
	cmd := exec.Command("redis-server", args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	if err := awaitPing(s.Addr, exited); err != nil {
		if !errors.Is(err, errExited) {
			s.kill()
		}
		return fmt.Errorf("redis-server: %w", err)
	}
	return nil
}

// External reports whether the server was given by EnvURL (and so cannot
// be killed or restarted).
func (s *Server) External() bool { return s.external }

// Kill stops the server abruptly, as a crash would.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	if s.external {
		tb.Skip("redistest: cannot kill the external server of " + EnvURL)
	}
	s.kill()
}

func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts the server again on the same port: empty, or with its
// data for a durable server.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if s.external {
		tb.Skip("redistest: cannot restart the external server of " + EnvURL)
	}
	s.kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // port still in TIME_WAIT; poll again
	}
}

// Stop ends the server and removes its files.
func (s *Server) Stop() {
	if s.external {
		return
	}
	s.kill()
	os.RemoveAll(s.dir)
}

// Options returns go-redis options for the server.
func (s *Server) Options() *redis.Options {
	opts, err := redis.ParseURL(s.URL)
	if err != nil {
		panic(err)
	}
	return opts
}

// Client returns a client closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	rdb := redis.NewClient(s.Options())
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// UniqueID returns a short random token for topology ids and key
// prefixes, so tests sharing one server never see each other's data.
func UniqueID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// errExited: the server process ended before it answered.
var errExited = errors.New("exited at start (port taken?)")

// awaitPing polls the server at addr with PING until it answers (nil),
// its process exits (errExited) or 10 s pass.
func awaitPing(addr string, exited <-chan struct{}) error {
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("on %s: %w", addr, errExited)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("on %s did not answer PING: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not synchronisation
	}
}
