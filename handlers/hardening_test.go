package handlers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

// rawWS is a WebSocket client that writes frames byte by byte, for what
// a well-behaved library will not send: ping floods, invalid UTF-8,
// invalid close reasons.
type rawWS struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func (th *testHub) dialRaw(header http.Header) *rawWS {
	th.t.Helper()
	return th.dialRawWith(&net.Dialer{Timeout: 5 * time.Second}, header)
}

// dialRawWith is dialRaw through d (for socket options).
func (th *testHub) dialRawWith(d *net.Dialer, header http.Header) *rawWS {
	th.t.Helper()
	addr := strings.TrimPrefix(th.http.URL, "http://")
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		th.t.Fatal(err)
	}
	th.t.Cleanup(func() { conn.Close() })
	var key [16]byte
	rand.Read(key[:])
	var req strings.Builder
	fmt.Fprintf(&req, "GET /api/v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: %s\r\n",
		addr, base64.StdEncoding.EncodeToString(key[:]), Subprotocol)
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, req.String()); err != nil {
		th.t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		th.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		th.t.Fatalf("handshake: %d", resp.StatusCode)
	}
	return &rawWS{t: th.t, conn: conn, br: br}
}

// frame encodes one masked client frame.
func clientFrame(opcode byte, payload []byte) []byte {
	b := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	mask := [4]byte{1, 2, 3, 4}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

func (r *rawWS) write(b []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// readFrame reads one server frame (unmasked).
func (r *rawWS) readFrame() (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0F, payload, nil
}

// untilClose reads frames until the server's close frame and returns its
// code, with the text messages and pongs seen before it.
func (r *rawWS) untilClose() (code int, texts []string, pongs int) {
	r.t.Helper()
	for {
		op, p, err := r.readFrame()
		if err != nil {
			r.t.Fatalf("connection ended without a close frame: %v (after %d texts, %d pongs)", err, len(texts), pongs)
		}
		switch op {
		case 0x1:
			texts = append(texts, strings.Split(string(p), "\n")...)
		case 0xA:
			pongs++
		case 0x8:
			if len(p) < 2 {
				return 0, texts, pongs
			}
			return int(binary.BigEndian.Uint16(p)), texts, pongs
		}
	}
}

func TestPingFloodIsRateLimitedThenClosed1008(t *testing.T) {
	th := newTestHub(t)
	r := th.dialRaw(bearer(th.token()))
	var flood []byte
	for range 5000 {
		flood = append(flood, clientFrame(0x9, []byte("p"))...)
	}
	// The hub may close (and stop reading) before the flood is written.
	go func() { _, _ = r.conn.Write(flood) }()
	code, texts, pongs := r.untilClose()
	if code != int(ClosePolicy) {
		t.Fatalf("close code %d, want 1008", code)
	}
	limited := 0
	for _, m := range texts {
		if strings.Contains(m, `"code":"rate_limited"`) {
			limited++
		}
	}
	// The burst (40) is answered; then every ping over the rate is a
	// violation, and the 51st violation closes.
	if pongs > 45 || limited == 0 {
		t.Fatalf("%d pongs, %d rate_limited replies before 1008; want at most the burst of pongs and some rate_limited", pongs, limited)
	}
	t.Logf("%d pongs, %d rate_limited, then 1008", pongs, limited)
}

func TestPingsWithinTheBudgetArePonged(t *testing.T) {
	th := newTestHub(t)
	c := th.openWS(bearer(th.token()))
	go func() { // the library reads pongs only while a Read runs
		for {
			if _, _, err := c.conn.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.conn.Ping(ctx)
		cancel()
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
}

func TestInvalidUTF8TextClosesWith1007(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	r := th.dialRaw(bearer(th.token()))
	r.write(clientFrame(0x1, []byte(`{"op":"subscribe","id":"1","topology":"`+id+"\xff"+`"}`)))
	code, texts, _ := r.untilClose()
	if code != int(CloseInvalidData) {
		t.Fatalf("close code %d, want 1007 (after %q)", code, texts)
	}
	if len(texts) != 0 {
		t.Fatalf("the invalid message was answered: %q", texts)
	}
}

func TestInvalidUTF8CloseReasonIsNotEchoed(t *testing.T) {
	th := newTestHub(t)
	r := th.dialRaw(bearer(th.token()))
	r.write(clientFrame(0x8, append([]byte{0x03, 0xE8}, "bye\xff\xfe"...)))
	code, _, _ := r.untilClose()
	if code != int(CloseInvalidData) {
		t.Fatalf("close code %d, want 1007 rather than an echo of 1000", code)
	}

	// A valid reason is echoed as before.
	r = th.dialRaw(bearer(th.token()))
	r.write(clientFrame(0x8, append([]byte{0x03, 0xE8}, "bye"...)))
	if code, _, _ := r.untilClose(); code != int(CloseNormal) {
		t.Fatalf("close code %d, want the echo 1000", code)
	}
}

func TestUnknownCritHeaderRefused(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	claims := jwt.MapClaims{
		"uuid": "user-1", "role": "viewer", "typ": "access", "iss": "decnet", "aud": "decnet-dashboard",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header["crit"] = []string{"x-topohub-test"}
	tok.Header["x-topohub-test"] = true
	raw, err := tok.SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	code, body := th.status(http.MethodGet, th.sseURL(id), bearer(raw))
	if code != http.StatusUnauthorized || !strings.Contains(body, "crit") {
		t.Fatalf("%d %s, want 401 naming crit", code, body)
	}
	if _, resp, err := th.dialWS(th.wsURL(), bearer(raw)); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("websocket with crit: %v %v, want 401", err, resp)
	}
	// The same token without crit is accepted.
	delete(tok.Header, "crit")
	raw, _ = tok.SignedString(testSecret)
	th.openSSE(th.sseURL(id), bearer(raw)).Close()
}

func TestMaxSessionCapsExp(t *testing.T) {
	const maxSession = 1500 * time.Millisecond
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) { c.Auth.MaxSession = maxSession }))
	id := th.newTopology()
	forever := th.token(claim("exp", 9e18)) // an exp that would never come

	ws := th.openWS(bearer(forever))
	ws.subscribe("1", id)
	ticket := th.mintTicket(forever)
	conn, _, err := th.dialWS(th.wsURL()+"?ticket="+ticket, nil)
	if err != nil {
		t.Fatal(err)
	}
	viaTicket := th.wrapWS(conn)
	sse := th.openSSE(th.sseURL(id), bearer(forever))

	// A refresh reports the capped end.
	ws.send(`{"op":"refresh","id":"r","token":"` + forever + `"}`)
	m := ws.expect("refreshed")
	if end := time.Unix(m.ExpiresAt, 0); end.After(time.Now().Add(maxSession + time.Second)) {
		t.Fatalf("refreshed until %v, want at most MaxSession from now", end)
	}
	ws.expectClose(CloseCredentials, 10*time.Second)
	viaTicket.expectClose(CloseCredentials, 10*time.Second)
	if !sse.ended(10 * time.Second) {
		t.Fatal("the SSE stream outlived MaxSession")
	}
}

// pausedRedis is a real redis-server that hangs for d: CLIENT PAUSE ALL
// blocks every other client's commands, as a SIGSTOP'd server would.
func pauseRedis(t *testing.T, srv *redistest.Server, d time.Duration) {
	t.Helper()
	admin := srv.Client(t)
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", d.Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
}

// TestHungOrStoppedRedisAnswers503Fast checks that every Redis call on a
// request path is bounded by Config.RequestTimeout: with Redis hung (and
// then stopped), a new SSE stream, a WebSocket handshake and a ticket
// mint are answered 503 with Retry-After long before Redis would answer.
func TestHungOrStoppedRedisAnswers503Fast(t *testing.T) {
	srv := redistest.Start(t)
	if srv.External() {
		t.Skip("needs its own redis-server to pause and kill")
	}
	rdb := redis.NewClient(srv.Options())
	t.Cleanup(func() { rdb.Close() })
	calls, err := rdb.AsyncAutoPipeline() // as cmd/topohub wires the request-path stores
	if err != nil {
		t.Fatal(err)
	}
	blocking, err := rdb.AutoPipeline() // as cmd/topohub wires snapshot reads
	if err != nil {
		t.Fatal(err)
	}
	prefix := redistest.UniqueID("slow") + ":"
	th := newTestHub(t, withRedis(srv), withPrefix(prefix), withConfig(func(c *Config) {
		c.Tickets = busredis.NewTickets(calls, prefix, 0)
		c.Limiter = busredis.NewLimiter(calls, busredis.LimiterConfig{Prefix: prefix, Logger: quietLog})
		c.Revocations = busredis.NewRevocations(calls, prefix+"revoked")
	}), withSnapshotWrapper(func(hub.SnapshotSource) hub.SnapshotSource {
		return busredis.NewSnapshots(blocking, prefix).WithExistenceClient(calls)
	}))
	id := th.newTopology()
	plain := th.token()                        // no jti: no revocation check
	withJTI := th.token(claim("jti", "j-503")) // checked against the revocation set
	ticket := th.mintTicket(plain)
	// A WebSocket that will resume a topology while Redis hangs: the
	// resume checks existence, a call the subscribe waits for.
	ws := th.openWS(bearer(plain))
	cursor := ws.subscribe("s", id).ID
	ws.send(`{"op":"unsubscribe","id":"u","topology":"` + id + `"}`)
	ws.expect("unsubscribed")

	const pause = 8 * time.Second
	cases := []struct {
		name string
		do   func() (int, http.Header)
	}{
		{"SSE stream (snapshot read)", func() (int, http.Header) { return th.statusHeader(http.MethodGet, th.sseURL(id), bearer(plain)) }},
		{"SSE stream (revocation check)", func() (int, http.Header) { return th.statusHeader(http.MethodGet, th.sseURL(id), bearer(withJTI)) }},
		{"WebSocket handshake (cap admission)", func() (int, http.Header) { return th.wsStatus(th.wsURL(), bearer(plain)) }},
		{"WebSocket handshake (ticket redemption)", func() (int, http.Header) { return th.wsStatus(th.wsURL()+"?ticket="+ticket, nil) }},
		{"ticket mint", func() (int, http.Header) { return th.statusHeader(http.MethodPost, th.ticketURL(), bearer(plain)) }},
	}
	check := func(phase string) {
		for _, c := range cases {
			start := time.Now()
			code, h := c.do()
			took := time.Since(start)
			if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
				t.Errorf("%s, %s: %d Retry-After %q, want 503 with Retry-After", phase, c.name, code, h.Get("Retry-After"))
			}
			// Generous: what matters is that the answer did not wait for
			// Redis to come back.
			if took > pause/2 {
				t.Errorf("%s, %s: answered after %v", phase, c.name, took)
			}
			t.Logf("%s, %s: %d after %v", phase, c.name, code, took.Round(time.Millisecond))
		}
	}
	pauseRedis(t, srv, pause)
	start := time.Now()
	ws.send(`{"op":"subscribe","id":"r","topology":"` + id + `","since":"` + cursor + `"}`)
	ws.expectError("unavailable", "r")
	if took := time.Since(start); took > pause/2 {
		t.Errorf("redis hung, WebSocket resume: unavailable after %v", took)
	}
	check("redis hung")
	srv.Kill(t)
	check("redis stopped")
}

// statusHeader performs a request and returns its status and headers.
func (th *testHub) statusHeader(method, url string, header http.Header) (int, http.Header) {
	th.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp := th.do(ctx, method, url, header)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// wsStatus performs a WebSocket handshake that must be refused.
func (th *testHub) wsStatus(url string, header http.Header) (int, http.Header) {
	th.t.Helper()
	conn, resp, err := th.dialWS(url, header)
	if err == nil {
		conn.CloseNow()
		return http.StatusSwitchingProtocols, nil
	}
	if resp == nil {
		th.t.Fatalf("handshake: %v", err)
	}
	return resp.StatusCode, resp.Header
}

func TestTooManyAnswersCarryRetryAfter(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) {
		c.Limiter = nil
		c.TicketBurst = 1
	}))
	id := th.newTopology()
	tok := th.token(claim("uuid", redistest.UniqueID("cap")))
	for range 5 {
		th.openSSE(th.sseURL(id), bearer(tok))
	}
	if code, h := th.statusHeader(http.MethodGet, th.sseURL(id), bearer(tok)); code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Errorf("stream over the cap: %d Retry-After %q", code, h.Get("Retry-After"))
	}
	th.mintTicket(tok)
	if code, h := th.statusHeader(http.MethodPost, th.ticketURL(), bearer(tok)); code != http.StatusTooManyRequests || h.Get("Retry-After") != "1" {
		t.Errorf("mint over the rate: %d Retry-After %q, want 429 and 1 (one ticket per second)", code, h.Get("Retry-After"))
	}
}

// syncBuffer is a log sink the handlers may write to concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCredentialInPathIsNotLoggedNorEchoed(t *testing.T) {
	var logs syncBuffer
	th := newTestHub(t, withConfig(func(c *Config) { c.Logger = slog.New(slog.NewJSONHandler(&logs, nil)) }))
	tok := th.token()
	sig := tok[strings.LastIndexByte(tok, '.')+1:]
	ticketShaped := strings.Repeat("Ab3-_", 8) + "xyz"           // 43 base64url characters
	short := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl" // a JWT short enough to be echoed
	for _, seg := range []string{tok, short, ticketShaped, strings.Repeat("k", 100)} {
		code, body := th.status(http.MethodGet, th.sseURL(seg), bearer(tok))
		if strings.Contains(body, seg) || strings.Contains(body, sig) {
			t.Errorf("%d body echoes the segment: %s", code, body)
		}
		if seg == short && (code != http.StatusBadRequest || !strings.Contains(body, redacted)) {
			t.Errorf("JWT as topology id: %d %s, want 400 with the id redacted", code, body)
		}
	}
	code, _ := th.status(http.MethodGet, th.http.URL+"/api/v1/"+tok, nil)
	if code != http.StatusNotFound {
		t.Errorf("unknown route: %d", code)
	}
	waitFor(t, 5*time.Second, "access log lines", func() bool { return strings.Count(logs.String(), `"msg":"http request"`) >= 5 })
	out := logs.String()
	if strings.Contains(out, sig) || strings.Contains(out, short) || strings.Contains(out, ticketShaped) || strings.Contains(out, strings.Repeat("k", 100)) {
		t.Fatalf("a credential-shaped path segment reached the log:\n%s", out)
	}
	if !strings.Contains(out, "/api/v1/topologies/"+redacted+"/events") {
		t.Fatalf("the redacted path is not logged:\n%s", out)
	}
	// An ordinary id is logged as it is.
	id := th.newTopology()
	th.status(http.MethodGet, th.sseURL(id), nil)
	waitFor(t, 5*time.Second, "the plain path logged", func() bool { return strings.Contains(logs.String(), id+"/events") })
}

func TestRedactPath(t *testing.T) {
	for in, want := range map[string]string{
		"/api/v1/topologies/T/events":                    "/api/v1/topologies/T/events",
		"/api/v1/topologies/host:web-1/events":           "/api/v1/topologies/host:web-1/events",
		"/api/v1/topologies/aaa.bbb.ccc/events":          "/api/v1/topologies/" + redacted + "/events",
		"/api/v1/topologies/eyJhbGciOiJIUzI1NiJ9/events": "/api/v1/topologies/" + redacted + "/events",
		"/a/" + strings.Repeat("x", 65):                  "/a/" + redacted,
		"/a/" + strings.Repeat("x", 64):                  "/a/" + strings.Repeat("x", 64),
		"/a/b.c":                                         "/a/b.c",
		"/a/1.2.3":                                       "/a/" + redacted,
	} {
		if got := redactPath(in); got != want {
			t.Errorf("redactPath(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { redactPath("/api/v1/topologies/T/events") }); n != 0 {
		t.Errorf("a clean path costs %v allocations", n)
	}
}
