package handlers

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
	"topohub/internal/testwait"
)

// pkgRedis is the redis-server shared by this package's tests; each test
// uses its own key prefix and topology ids.
var pkgRedis *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &pkgRedis)) }

// quietLog keeps request logs out of test output.
var quietLog = slog.New(slog.DiscardHandler)

var testSecret = []byte("0123456789abcdef0123456789abcdef-test")

// testHub is a hub wired to a real redis-server and served over loopback.
type testHub struct {
	t      *testing.T
	redis  *redistest.Server
	rdb    *redis.Client
	hub    *hub.Hub
	sub    *busredis.Subscriber
	snaps  *busredis.Snapshots
	srv    *Server
	http   *httptest.Server
	prefix string
	stop   func() // ends the hub (idempotent); runs at cleanup too
}

type hubOption func(*hubSetup)

type hubSetup struct {
	redis   *redistest.Server
	hubCfg  hub.Config
	cfg     Config
	wrapSrc func(hub.SnapshotSource) hub.SnapshotSource
	prefix  string // key prefix; zero value: a unique one
	addr    string // listen address; zero value: a free port
}

func withRedis(s *redistest.Server) hubOption     { return func(h *hubSetup) { h.redis = s } }
func withConfig(f func(*Config)) hubOption        { return func(h *hubSetup) { f(&h.cfg) } }
func withHubConfig(f func(*hub.Config)) hubOption { return func(h *hubSetup) { f(&h.hubCfg) } }

// withPrefix shares a key prefix (and so topologies and tickets) with
// another test hub, e.g. the one this hub restarts.
func withPrefix(p string) hubOption { return func(h *hubSetup) { h.prefix = p } }

// withAddr listens on addr, e.g. the address of a hub being restarted.
func withAddr(addr string) hubOption { return func(h *hubSetup) { h.addr = addr } }

func withSnapshotWrapper(f func(hub.SnapshotSource) hub.SnapshotSource) hubOption {
	return func(h *hubSetup) { h.wrapSrc = f }
}

func newTestHub(t *testing.T, opts ...hubOption) *testHub {
	t.Helper()
	setup := hubSetup{redis: pkgRedis}
	setup.cfg.Logger = quietLog
	setup.hubCfg.Logger = quietLog
	// Tests assert exact delivery on a loaded machine: the age bound on
	// lag is tested on its own.
	setup.hubCfg.MaxLag = 30 * time.Second
	setup.cfg.Auth = AuthConfig{Secret: testSecret, Issuer: "decnet", Audience: "decnet-dashboard", Type: "access"}
	for _, o := range opts {
		o(&setup)
	}
	if setup.prefix == "" {
		setup.prefix = redistest.UniqueID("t") + ":"
	}
	th := &testHub{t: t, redis: setup.redis, prefix: setup.prefix}
	th.rdb = setup.redis.Client(t)
	th.snaps = busredis.NewSnapshots(th.rdb, th.prefix)
	var src hub.SnapshotSource = th.snaps
	if setup.wrapSrc != nil {
		src = setup.wrapSrc(src)
	}
	setup.hubCfg.Snapshots = src
	h, err := hub.New(setup.hubCfg)
	if err != nil {
		t.Fatal(err)
	}
	th.hub = h
	th.sub = busredis.NewSubscriber(setup.redis.Options(), h, busredis.SubscriberConfig{Families: h.Families(), Logger: quietLog})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { th.sub.Run(ctx) })
	setup.cfg.Ready = th.sub.Ready
	srv, err := New(h, setup.cfg)
	if err != nil {
		t.Fatal(err)
	}
	th.http = httptest.NewUnstartedServer(srv.Handler())
	if setup.addr != "" {
		th.http.Listener.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l, err := net.Listen("tcp", setup.addr)
			if err == nil {
				th.http.Listener = l
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("listen %s: %v", setup.addr, err)
			}
			time.Sleep(20 * time.Millisecond) // poll: the old listener's port is being released
		}
	}
	th.serve(srv, cancel, &wg, 10*time.Second)
	return th
}

// serve starts th.http (created unstarted, for srv) and arranges its end
// at cleanup: drain, close, cancel the background work, wait for it. It
// returns once the bus subscription is up (within ready).
func (th *testHub) serve(srv *Server, cancel context.CancelFunc, wg *sync.WaitGroup, ready time.Duration) {
	th.t.Helper()
	th.srv = srv
	th.http.Start()
	var once sync.Once
	th.stop = func() {
		once.Do(func() {
			srv.Drain()
			th.http.Close()
			cancel()
			wg.Wait()
		})
	}
	th.t.Cleanup(th.stop)
	waitFor(th.t, ready, "bus subscription", th.sub.Ready)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, d, what, cond)
}

// createTopology writes the topology's hash, as the legacy API would.
func (th *testHub) createTopology(id, status string) {
	th.t.Helper()
	if err := th.rdb.HSet(context.Background(), th.snaps.TopologyKey(id), "status", status).Err(); err != nil {
		th.t.Fatal(err)
	}
}

func (th *testHub) addMutation(topology, id, row string) {
	th.t.Helper()
	if err := th.rdb.HSet(context.Background(), th.snaps.MutationsKey(topology), id, row).Err(); err != nil {
		th.t.Fatal(err)
	}
}

// newTopology creates a topology with a unique id.
func (th *testHub) newTopology() string {
	id := redistest.UniqueID("topo-")
	th.createTopology(id, "active")
	return id
}

// publish is what `redis-cli publish` does.
func (th *testHub) publish(channel, body string) {
	th.t.Helper()
	if err := th.rdb.Publish(context.Background(), channel, body).Err(); err != nil {
		th.t.Fatal(err)
	}
}

type tokenOpt func(jwt.MapClaims)

func (th *testHub) token(opts ...tokenOpt) string {
	return signToken(th.t, testSecret, opts...)
}

func signToken(t testing.TB, secret []byte, opts ...tokenOpt) string {
	t.Helper()
	claims := jwt.MapClaims{
		"uuid": "user-1", "sub": "user-1", "role": "viewer", "typ": "access",
		"iss": "decnet", "aud": "decnet-dashboard",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}
	for _, o := range opts {
		o(claims)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func claim(k string, v any) tokenOpt { return func(c jwt.MapClaims) { c[k] = v } }
func without(k string) tokenOpt      { return func(c jwt.MapClaims) { delete(c, k) } }

// sseStream reads an SSE response frame by frame.
type sseStream struct {
	t      *testing.T
	resp   *http.Response
	frames chan string
	done   chan struct{}
	cancel context.CancelFunc
}

func (th *testHub) sseURL(id string) string {
	return th.http.URL + "/api/v1/topologies/" + id + "/events"
}

// get performs a request for the stream and returns the response; the
// caller reads or closes it.
func (th *testHub) get(ctx context.Context, url string, header http.Header) *http.Response {
	th.t.Helper()
	return th.do(ctx, http.MethodGet, url, header)
}

// do performs a request; the caller reads or closes the response.
func (th *testHub) do(ctx context.Context, method, url string, header http.Header) *http.Response {
	th.t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		th.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := noKeepAlive.Do(req)
	if err != nil {
		th.t.Fatal(err)
	}
	return resp
}

var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// openSSE opens a stream that must answer 200.
func (th *testHub) openSSE(url string, header http.Header) *sseStream {
	th.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp := th.get(ctx, url, header)
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		th.t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	s := &sseStream{t: th.t, resp: resp, frames: make(chan string, 1024), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		defer close(s.frames)
		r := bufio.NewReader(resp.Body)
		var frame strings.Builder
		for {
			line, err := r.ReadString('\n')
			frame.WriteString(line)
			if err != nil {
				return
			}
			if line == "\n" {
				s.frames <- frame.String()
				frame.Reset()
			}
		}
	}()
	th.t.Cleanup(s.Close)
	return s
}

// Close ends the stream from the client side.
func (s *sseStream) Close() {
	s.cancel()
	s.resp.Body.Close()
	<-s.done
}

// next returns the next frame (keepalive comments included).
func (s *sseStream) next() string {
	s.t.Helper()
	select {
	case f, ok := <-s.frames:
		if !ok {
			s.t.Fatal("stream ended")
		}
		return f
	case <-time.After(10 * time.Second):
		s.t.Fatal("no frame within 10s")
	}
	return ""
}

// nextEvent skips keepalive comments.
func (s *sseStream) nextEvent() string {
	s.t.Helper()
	for {
		if f := s.next(); !strings.HasPrefix(f, ":") {
			return f
		}
	}
}

// ended reports whether the server closed the stream within d.
func (s *sseStream) ended(d time.Duration) bool {
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-s.frames:
			if !ok {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// sseFrame is one parsed frame.
type sseFrame struct{ id, event, data string }

func parseFrame(t testing.TB, f string) sseFrame {
	t.Helper()
	var out sseFrame
	for _, line := range strings.Split(strings.TrimSuffix(f, "\n\n"), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "id":
			out.id = v
		case "event":
			out.event = v
		case "data":
			out.data = v
		default:
			t.Fatalf("unexpected line %q in frame %q", line, f)
		}
	}
	return out
}
