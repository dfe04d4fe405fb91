package handlers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"

	"topohub/hub"
)

// wsMsg is one server frame.
type wsMsg struct {
	Op        string          `json:"op"`
	ID        string          `json:"id"`
	Topology  string          `json:"topology"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	ExpiresAt int64           `json:"expires_at"`
	raw       string
}

// wsClient is a test WebSocket client that reads on the caller's
// goroutine, so a test that does not call next is a client that stopped
// reading.
type wsClient struct {
	t       testing.TB
	conn    *websocket.Conn
	pending []wsMsg // frames of the last message not returned yet
	msgs    int     // messages read
}

func (th *testHub) wsURL() string {
	return "ws" + strings.TrimPrefix(th.http.URL, "http") + "/api/v1/ws"
}

// dialWS performs a handshake; the caller checks the outcome.
func (th *testHub) dialWS(url string, header http.Header, protocols ...string) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if protocols == nil {
		protocols = []string{Subprotocol}
	}
	return websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:   noKeepAlive,
		HTTPHeader:   header,
		Subprotocols: protocols,
	})
}

// openWS opens a WebSocket that must be accepted.
func (th *testHub) openWS(header http.Header) *wsClient {
	th.t.Helper()
	conn, resp, err := th.dialWS(th.wsURL(), header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		th.t.Fatalf("dial: %v (status %d)", err, status)
	}
	return th.wrapWS(conn)
}

func (th *testHub) wrapWS(conn *websocket.Conn) *wsClient {
	th.t.Cleanup(func() { conn.CloseNow() })
	conn.SetReadLimit(2 << 20) // a single event may be larger than the batch cap
	return &wsClient{t: th.t, conn: conn}
}

func (c *wsClient) send(msg string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.t.Fatalf("write %s: %v", msg, err)
	}
}

// read returns the next message's frames, or the error that ended the
// connection.
func (c *wsClient) read(d time.Duration) ([]wsMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	typ, b, err := c.conn.Read(ctx)
	if err != nil {
		return nil, err
	}
	c.msgs++
	if typ != websocket.MessageText {
		return nil, fmt.Errorf("binary message %q", b)
	}
	var out []wsMsg
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		var m wsMsg
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("frame %q: %v", line, err)
		}
		m.raw = string(line)
		out = append(out, m)
	}
	return out, nil
}

// next returns the next frame.
func (c *wsClient) next() wsMsg {
	c.t.Helper()
	if len(c.pending) == 0 {
		msgs, err := c.read(10 * time.Second)
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		c.pending = msgs
	}
	m := c.pending[0]
	c.pending = c.pending[1:]
	return m
}

// expect reads the next frame and checks its op (and, for events, its
// event name).
func (c *wsClient) expect(op string, event ...string) wsMsg {
	c.t.Helper()
	m := c.next()
	if m.Op != op || (len(event) > 0 && m.Event != event[0]) {
		c.t.Fatalf("got %s, want op %s %v", m.raw, op, event)
	}
	return m
}

// expectError reads the next frame and checks it is an error with code,
// echoing id.
func (c *wsClient) expectError(code, id string) wsMsg {
	c.t.Helper()
	m := c.expect("error")
	if m.Code != code || m.ID != id || m.Message == "" {
		c.t.Fatalf("got %s, want error %s with id %q", m.raw, code, id)
	}
	return m
}

// subscribe subscribes and reads the ack and the first snapshot.
func (c *wsClient) subscribe(id, topology string) wsMsg {
	c.t.Helper()
	c.send(`{"op":"subscribe","id":"` + id + `","topology":"` + topology + `"}`)
	if m := c.expect("subscribed"); m.ID != id || m.Topology != topology {
		c.t.Fatalf("ack %s", m.raw)
	}
	snap := c.expect("event", "snapshot")
	if snap.Topology != topology {
		c.t.Fatalf("snapshot %s", snap.raw)
	}
	return snap
}

// expectClose reads until the connection ends and checks the close code.
func (c *wsClient) expectClose(code websocket.StatusCode, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := c.read(time.Until(deadline))
		if err == nil {
			continue
		}
		if got := websocket.CloseStatus(err); got != code {
			c.t.Fatalf("connection ended with %v (status %d), want %d", err, got, code)
		}
		return
	}
}

// wsTickets is an in-memory TicketStore, so these tests do not depend on
// busredis.
type wsTickets struct {
	mu sync.Mutex
	m  map[string]hub.Principal
}

var _ TicketStore = (*wsTickets)(nil)

func (s *wsTickets) Mint(_ context.Context, p hub.Principal) (string, time.Duration, error) {
	b := make([]byte, 16)
	rand.Read(b)
	t := hex.EncodeToString(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]hub.Principal{}
	}
	s.m[t] = p
	return t, time.Minute, nil
}

func (s *wsTickets) Redeem(_ context.Context, t string) (hub.Principal, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[t]
	if !ok {
		return hub.Principal{}, ErrTicketInvalid
	}
	delete(s.m, t)
	return p, nil
}

func TestWebSocketThreeTopologiesOneSocket(t *testing.T) {
	th := newTestHub(t)
	ids := []string{th.newTopology(), th.newTopology(), th.newTopology()}
	c := th.openWS(bearer(th.token()))
	if got := c.conn.Subprotocol(); got != Subprotocol {
		t.Fatalf("subprotocol %q", got)
	}
	for i, id := range ids {
		snap := c.subscribe(fmt.Sprint(i+1), id)
		if !strings.Contains(string(snap.Data), `"topology_id":"`+id+`"`) || strings.Contains(string(snap.Data), "resync") {
			t.Fatalf("snapshot %s", snap.raw)
		}
	}
	for i, id := range ids {
		th.publish("topology."+id+".status", fmt.Sprintf(`{"n":%d}`, i))
	}
	for i, id := range ids {
		m := c.expect("event", "status")
		if m.Topology != id || !strings.Contains(string(m.Data), fmt.Sprintf(`"payload":{"n":%d}`, i)) {
			t.Fatalf("event %d: %s, want topology %s", i, m.raw, id)
		}
	}
	// Subscribing again is acknowledged and changes nothing (no snapshot).
	c.send(`{"op":"subscribe","id":"again","topology":"` + ids[0] + `"}`)
	c.expect("subscribed")
	c.send(`{"op":"unsubscribe","id":"u","topology":"` + ids[1] + `"}`)
	if m := c.expect("unsubscribed"); m.ID != "u" || m.Topology != ids[1] {
		t.Fatalf("unsubscribe ack %s", m.raw)
	}
	// One bus connection keeps the order of publishes: had the event of
	// the unsubscribed topology been delivered, it would come first.
	th.publish("topology."+ids[1]+".status", `{"gone":true}`)
	th.publish("topology."+ids[2]+".status", `{"still":true}`)
	if m := c.expect("event", "status"); m.Topology != ids[2] {
		t.Fatalf("after unsubscribe got %s", m.raw)
	}
	// Unsubscribing what is not subscribed is acknowledged too.
	c.send(`{"op":"unsubscribe","id":"u2","topology":"` + ids[1] + `"}`)
	c.expect("unsubscribed")
	c.send(`{"op":"ping","id":"p"}`)
	if m := c.expect("pong"); m.raw != `{"op":"pong","id":"p"}` {
		t.Fatalf("pong %s", m.raw)
	}
}

func TestWebSocketErrorCodes(t *testing.T) {
	th := newTestHub(t, withHubConfig(func(c *hub.Config) { c.MaxSubscriptions = 2 }))
	a, b, gone := th.newTopology(), th.newTopology(), th.newTopology()
	th.addMutation(a, "m1", `{"id":"m1","state":"pending"}`)
	c := th.openWS(bearer(th.token()))

	c.send(`not json`)
	c.expectError("bad_request", "")
	c.send(`{"op":"dance","id":"1"}`)
	c.expectError("bad_request", "1")
	c.send(`{"op":"subscribe","id":"2"}`)
	c.expectError("bad_request", "2")
	c.send(`{"op":"refresh","id":"3"}`)
	c.expectError("bad_request", "3")
	c.send(`{"op":"subscribe","id":"4","topology":"a.b"}`)
	c.expectError("invalid_topology", "4")
	c.send(`{"op":"subscribe","id":"5","topology":"` + strings.Repeat("x", 129) + `"}`)
	c.expectError("invalid_topology", "5")
	c.send(`{"op":"subscribe","id":"6","topology":""}`)
	c.expectError("invalid_topology", "6")
	c.send(`{"op":"subscribe","id":"7","topology":"nope-` + a + `"}`)
	if m := c.expectError("not_found", "7"); m.raw != `{"op":"error","id":"7","topology":"nope-`+a+`","code":"not_found","message":"topology not found"}` {
		t.Fatalf("not_found frame %s", m.raw)
	}
	c.send(`{"op":"subscribe","id":"7b","topology":"` + a + `:mutations"}`)
	c.expectError("not_found", "7b") // a's mutations hash is no topology
	c.send(`{"op":"refresh","id":"8","token":"` + th.token(claim("uuid", "user-2")) + `"}`)
	c.expectError("forbidden", "8")
	c.send(`{"op":"refresh","id":"9","token":"not.a.jwt"}`)
	c.expectError("forbidden", "9")
	c.send(`{"op":"refresh","id":"10","ticket":"unknown"}`)
	c.expectError("forbidden", "10")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageBinary, []byte(`{"op":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	c.expectError("bad_request", "")

	c.subscribe("11", a)
	c.subscribe("12", gone)
	c.send(`{"op":"subscribe","id":"13","topology":"` + b + `"}`)
	c.expectError("too_many_subscriptions", "13")

	// A topology deleted later: an error frame naming it, without an id;
	// the connection stays open and the subscription is gone.
	th.rdb.Del(context.Background(), th.snaps.TopologyKey(gone))
	th.hub.BusGap()
	var sawError, sawSnapshot bool
	for !sawError || !sawSnapshot {
		m := c.next()
		switch {
		case m.Op == "error" && !sawError:
			if m.raw != `{"op":"error","topology":"`+gone+`","code":"not_found","message":"topology not found"}` {
				t.Fatalf("async not_found %s", m.raw)
			}
			sawError = true
		case m.Op == "event" && m.Event == "snapshot" && m.Topology == a && !sawSnapshot:
			sawSnapshot = true // the resync of the topology still there
		default:
			t.Fatalf("got %s", m.raw)
		}
	}
	c.send(`{"op":"subscribe","id":"14","topology":"` + b + `"}`)
	c.expect("subscribed")
	c.expect("event", "snapshot")
}

func TestWebSocketRateLimit(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) {
		c.ControlRate, c.ControlBurst, c.MaxControlViolations = rate.Limit(0.01), 2, 100
	}))
	c := th.openWS(bearer(th.token()))
	c.send(`{"op":"ping","id":"1"}`)
	c.send(`{"op":"ping","id":"2"}`)
	c.send(`{"op":"ping","id":"3"}`)
	c.expect("pong")
	c.expect("pong")
	c.expectError("rate_limited", "3")
}

func TestWebSocketControlAbuseCloses1008(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) {
		c.ControlRate, c.ControlBurst, c.MaxControlViolations = rate.Limit(0.01), 1, 3
	}))
	c := th.openWS(bearer(th.token()))
	for i := range 5 {
		c.send(fmt.Sprintf(`{"op":"ping","id":"%d"}`, i))
	}
	c.expectClose(ClosePolicy, 10*time.Second)
	waitFor(t, 10*time.Second, "client released", func() bool { return th.hub.Clients() == 0 })
}

func TestWebSocketMessageTooBig(t *testing.T) {
	th := newTestHub(t)
	c := th.openWS(bearer(th.token()))
	c.send(`{"op":"ping","id":"` + strings.Repeat("x", maxControlMessage-21) + `"}`) // exactly 4 KiB
	c.expect("pong")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The server may close before the whole message is written.
	_ = c.conn.Write(ctx, websocket.MessageText, []byte(`{"op":"ping","id":"`+strings.Repeat("x", maxControlMessage)+`"}`))
	c.expectClose(CloseTooBig, 10*time.Second)
	waitFor(t, 10*time.Second, "client released", func() bool { return th.hub.Clients() == 0 })
}

func TestWebSocketExpiryAndRefresh(t *testing.T) {
	tickets := &wsTickets{}
	th := newTestHub(t, withConfig(func(c *Config) { c.Tickets = tickets }))
	exp := time.Now().Add(3 * time.Second).Truncate(time.Second)
	short := th.token(claim("exp", exp.Unix()))
	expiring := th.openWS(bearer(short))
	byToken := th.openWS(bearer(short))
	byTicket := th.openWS(bearer(short))

	// A refused refresh extends nothing.
	expiring.send(`{"op":"refresh","id":"r","token":"` + th.token(claim("uuid", "user-2")) + `"}`)
	expiring.expectError("forbidden", "r")

	later := time.Now().Add(time.Hour).Truncate(time.Second)
	byToken.send(`{"op":"refresh","id":"r1","token":"` + th.token(claim("exp", later.Unix()), claim("jti", "fresh")) + `"}`)
	if m := byToken.expect("refreshed"); m.ID != "r1" || m.ExpiresAt != later.Unix() {
		t.Fatalf("refreshed %s", m.raw)
	}
	ticket, _, _ := tickets.Mint(context.Background(), hub.Principal{User: "user-1", Role: "viewer", Expires: later})
	byTicket.send(`{"op":"refresh","id":"r2","ticket":"` + ticket + `"}`)
	if m := byTicket.expect("refreshed"); m.ExpiresAt != later.Unix() {
		t.Fatalf("refreshed %s", m.raw)
	}
	// A ticket is single-use, also for refresh.
	byTicket.send(`{"op":"refresh","id":"r3","ticket":"` + ticket + `"}`)
	byTicket.expectError("forbidden", "r3")

	expiring.expectClose(CloseCredentials, 10*time.Second)
	if time.Now().Before(exp) {
		t.Fatalf("closed before the token's exp")
	}
	// Past the first exp the refreshed connections still answer.
	for _, c := range []*wsClient{byToken, byTicket} {
		c.send(`{"op":"ping","id":"alive"}`)
		c.expect("pong")
	}
	var jtis []string
	th.hub.ForEachClient(func(c *hub.Client) { jtis = append(jtis, c.TokenID()) })
	if !strings.Contains(strings.Join(jtis, ","), "fresh") {
		t.Errorf("token ids %v: the refresh did not record the new jti", jtis)
	}
}

func TestWebSocketTicketAuthAndOrigin(t *testing.T) {
	tickets := &wsTickets{}
	th := newTestHub(t, withConfig(func(c *Config) {
		c.Tickets = tickets
		c.AllowedOrigins = []string{"https://dash.example", "*.trusted.example"}
	}))
	mint := func() string {
		tk, _, _ := tickets.Mint(context.Background(), hub.Principal{User: "user-1", Role: "viewer", Expires: time.Now().Add(time.Hour)})
		return tk
	}
	origin := func(o string) http.Header { return http.Header{"Origin": {o}} }

	ticket := mint()
	for _, o := range []string{"https://evil.example", "http://dash.example", "null"} {
		_, resp, err := th.dialWS(th.wsURL()+"?ticket="+ticket, origin(o))
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("origin %s: %v %v, want 403", o, err, resp)
		}
	}
	// Refused before authentication: the ticket was not spent.
	th.wrapWS(mustDial(t, th, th.wsURL()+"?ticket="+ticket, nil)).subscribe("1", th.newTopology())

	for _, o := range []string{"https://dash.example", "https://DASH.example", "https://a.trusted.example", th.http.URL} {
		c := th.wrapWS(mustDial(t, th, th.wsURL()+"?ticket="+mint(), origin(o)))
		c.send(`{"op":"ping"}`)
		c.expect("pong")
		c.conn.Close(websocket.StatusNormalClosure, "")
	}
	// Authentication happens at the handshake.
	for _, h := range []http.Header{nil, bearer("garbage"), bearer(th.token(claim("role", "guest")))} {
		_, resp, err := th.dialWS(th.wsURL(), h)
		if err == nil || resp == nil || (resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) {
			t.Fatalf("credentials %v: %v %v", h, err, resp)
		}
	}
	_, resp, _ := th.dialWS(th.wsURL()+"?token="+th.token(), nil)
	if resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("?token= without AllowQueryToken: %v", resp)
	}
}

func mustDial(t *testing.T, th *testHub, url string, header http.Header) *websocket.Conn {
	t.Helper()
	conn, resp, err := th.dialWS(url, header)
	if err != nil {
		t.Fatalf("dial %v: %v", resp, err)
	}
	return conn
}

func TestWebSocketSubprotocol(t *testing.T) {
	th := newTestHub(t)
	for _, c := range []struct {
		offer []string
		want  string
	}{
		{[]string{Subprotocol}, Subprotocol},
		{[]string{"other", Subprotocol}, Subprotocol},
		{[]string{}, ""},
	} {
		conn, _, err := th.dialWS(th.wsURL(), bearer(th.token()), c.offer...)
		if err != nil {
			t.Fatalf("offer %v: %v", c.offer, err)
		}
		if got := conn.Subprotocol(); got != c.want {
			t.Errorf("offer %v: selected %q, want %q", c.offer, got, c.want)
		}
		conn.Close(websocket.StatusNormalClosure, "")
	}
}

func TestWebSocketAndSSEShareTheCap(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	tok := th.token()
	for range 3 {
		th.openSSE(th.sseURL(id), bearer(tok)).nextEvent()
	}
	var ws []*wsClient
	for range 2 {
		ws = append(ws, th.openWS(bearer(tok)))
	}
	_, resp, err := th.dialWS(th.wsURL(), bearer(tok))
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("6th as WebSocket: %v %v, want 429", err, resp)
	}
	r := th.get(context.Background(), th.sseURL(id), bearer(tok))
	r.Body.Close()
	if r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("6th as SSE: %d, want 429", r.StatusCode)
	}
	ws[0].conn.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 10*time.Second, "slot released", func() bool {
		conn, _, err := th.dialWS(th.wsURL(), bearer(tok))
		if err != nil {
			return false
		}
		th.wrapWS(conn)
		return true
	})
}

// TestWebSocketSSEParity: the same PUBLISH reaches both transports with
// byte-identical data and the same event name and cursor.
func TestWebSocketSSEParity(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	th.addMutation(id, "m1", `{"id":"m1", "topology_id":"`+id+`","op":"add_decky","payload":{"name":"wéb1","n":1.50},"state":"pending","requested_at":1764300000.5,"applied_at":null,"reason":null}`)
	s := th.openSSE(th.sseURL(id), bearer(th.token()))
	c := th.openWS(bearer(th.token()))
	sseSnap := parseFrame(t, s.nextEvent())
	wsSnap := c.subscribe("1", id)
	bodies := []struct{ channel, body string }{
		{"topology." + id + ".mutation.applied", `{"v":1,"id":"x","type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1", "note":"a\u00e9\"b\\n</script>","big":1e400}}`},
		{"topology." + id + ".status", `{"state":"degraded"}`},
		{"decky.host:web1.service_added", `{"type":"","ts":2,"payload":{"topology_id":"` + id + `","emoji":"🦫"}}`},
	}
	for _, b := range bodies {
		th.publish(b.channel, b.body)
	}
	pairs := [][2]string{{sseSnap.data, string(wsSnap.Data)}}
	if sseSnap.id != wsSnap.ID || sseSnap.event != wsSnap.Event {
		t.Errorf("snapshot: SSE %s/%s, WS %s/%s", sseSnap.id, sseSnap.event, wsSnap.ID, wsSnap.Event)
	}
	for range bodies {
		sf := parseFrame(t, s.nextEvent())
		wf := c.expect("event")
		if sf.id != wf.ID || sf.event != wf.Event {
			t.Errorf("SSE %s/%s, WS %s/%s", sf.id, sf.event, wf.ID, wf.Event)
		}
		pairs = append(pairs, [2]string{sf.data, string(wf.Data)})
	}
	for _, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("data differs\nSSE %s\nWS  %s", p[0], p[1])
		}
	}
}

func TestWebSocketResume(t *testing.T) {
	th := newTestHub(t)
	id := th.newTopology()
	tok := th.token()
	c := th.openWS(bearer(tok))
	c.subscribe("1", id)
	for i := 1; i <= 3; i++ {
		th.publish("topology."+id+".status", fmt.Sprintf(`{"n":%d}`, i))
	}
	cursor := c.expect("event", "status").ID
	c.expect("event", "status")
	last := c.expect("event", "status").ID

	r := th.openWS(bearer(tok))
	r.send(`{"op":"subscribe","id":"2","topology":"` + id + `","since":"` + cursor + `"}`)
	r.expect("subscribed")
	for _, n := range []string{`{"n":2}`, `{"n":3}`} {
		if m := r.expect("event"); m.Event != "status" || !strings.Contains(string(m.Data), n) {
			t.Fatalf("resumed: got %s, want the event with %s and no snapshot", m.raw, n)
		}
	}
	r.send(`{"op":"subscribe","id":"3","topology":"` + th.newTopology() + `","since":"1-1"}`)
	r.expect("subscribed")
	if m := r.expect("event", "snapshot"); !strings.Contains(string(m.Data), `"resync":true`) {
		t.Fatalf("stale cursor: %s", m.raw)
	}
	// Resuming from the newest cursor gives nothing: the next frame is
	// the pong after the ack.
	r.send(`{"op":"unsubscribe","topology":"` + id + `"}`)
	r.expect("unsubscribed")
	r.send(`{"op":"subscribe","id":"4","topology":"` + id + `","since":"` + last + `"}`)
	r.expect("subscribed")
	r.send(`{"op":"ping"}`)
	r.expect("pong")
}

func TestWebSocketDisconnectReasons(t *testing.T) {
	th := newTestHub(t)
	for _, c := range []struct {
		reason hub.DisconnectReason
		code   websocket.StatusCode
	}{
		{hub.DisconnectRevoked, CloseCredentials},
		{hub.DisconnectExpired, CloseCredentials},
		{hub.DisconnectPolicy, ClosePolicy},
	} {
		ws := th.openWS(bearer(th.token()))
		waitFor(t, 10*time.Second, "client registered", func() bool { return th.hub.Clients() == 1 })
		th.hub.ForEachClient(func(cl *hub.Client) { cl.Disconnect(c.reason) })
		ws.expectClose(c.code, 10*time.Second)
		waitFor(t, 10*time.Second, "client released", func() bool { return th.hub.Clients() == 0 })
	}
	ws := th.openWS(bearer(th.token()))
	th.srv.Drain()
	ws.expectClose(CloseGoingAway, 10*time.Second)
	_, resp, err := th.dialWS(th.wsURL(), bearer(th.token()))
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Drain: %v %v", err, resp)
	}
}

func TestWebSocketKeepalive(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) {
		c.Keepalive, c.WriteTimeout = 30*time.Millisecond, time.Second
		c.Limiter = hub.NewLocalLimiter(1)
	}))
	// A client that reads answers pings and stays.
	var pings atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, th.wsURL(), &websocket.DialOptions{
		HTTPClient: noKeepAlive,
		HTTPHeader: bearer(th.token()),
		OnPingReceived: func(context.Context, []byte) bool {
			pings.Add(1)
			return true
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, _, err := conn.Read(context.Background())
		readErr <- err
	}()
	waitFor(t, 10*time.Second, "several pings", func() bool { return pings.Load() >= 5 })
	select {
	case err := <-readErr:
		t.Fatalf("answering client closed: %v", err)
	default:
	}
	conn.CloseNow()
	<-readErr

	// A client that never reads never answers: it is dropped and its slot
	// (a cap of 1) is free again.
	silent := th.openWS(bearer(th.token(claim("uuid", "user-2"))))
	waitFor(t, 10*time.Second, "silent client dropped", func() bool { return th.hub.Clients() == 0 })
	silent.conn.CloseNow()
	waitFor(t, 10*time.Second, "slot released", func() bool {
		conn, _, err := th.dialWS(th.wsURL(), bearer(th.token(claim("uuid", "user-2"))))
		if err != nil {
			return false
		}
		conn.CloseNow()
		return true
	})
}

// TestWebSocketSlowClientDoesNotDelayFastOne: while one client has
// stopped reading, another on the same topology receives every event of a
// burst; the stalled one's queue overflows into a resync snapshot, which
// it receives once it reads again.
func TestWebSocketSlowClientDoesNotDelayFastOne(t *testing.T) {
	const (
		burst     = 10000
		queueSize = 1024
		chunk     = 250
	)
	th := newTestHub(t,
		withHubConfig(func(c *hub.Config) { c.QueueSize = queueSize }),
		withConfig(func(c *Config) { c.Keepalive, c.WriteTimeout = time.Hour, time.Minute }),
	)
	id := th.newTopology()
	fast := th.openWS(bearer(th.token()))
	fast.subscribe("1", id)
	slow := th.openWS(bearer(th.token(claim("uuid", "slow"))))
	slow.subscribe("1", id)
	resyncs := th.hub.Stats().Resyncs.Load()

	// ~2 KiB per event: 20 MB in all, far more than the socket buffers
	// (4 MiB at most for the server's send buffer on Linux) and the slow
	// client's queue hold.
	pad := strings.Repeat("p", 2048)
	var received atomic.Int64
	pubErr := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for sent := 0; sent < burst; sent += chunk {
			// Pace on the fast client only, so that its own queue never
			// overflows on a loaded test machine.
			deadline := time.Now().Add(30 * time.Second)
			for received.Load() < int64(sent-chunk) {
				if time.Now().After(deadline) {
					pubErr <- fmt.Errorf("fast client stuck at %d of %d", received.Load(), sent)
					return
				}
				time.Sleep(time.Millisecond) // poll interval
			}
			pipe := th.rdb.Pipeline()
			for i := sent; i < sent+chunk; i++ {
				pipe.Publish(ctx, "topology."+id+".status", fmt.Sprintf(`{"n":%d,"pad":%q}`, i, pad))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()
	for i := range burst {
		m := fast.next()
		if m.Op != "event" || m.Event != "status" || !bytes.Contains(m.Data, fmt.Appendf(nil, `"payload":{"n":%d,`, i)) {
			t.Fatalf("fast client, event %d: got %.200s", i, m.raw)
		}
		received.Add(1)
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	// The hub holds nothing per event for the stalled client: its cursor
	// into the topology's log, which is bounded by the history size, fell
	// off that log, so it is owed one resync snapshot.
	t.Logf("fast client: %d events in %d messages", burst, fast.msgs)

	// The stalled client reads again: what the socket buffered, then one
	// resync snapshot in place of what it missed (it reflects everything
	// published so far), then live events.
	var events, snapshots int
	for snapshots == 0 {
		m := slow.next()
		switch {
		case m.Op != "event":
			t.Fatalf("slow client: %.200s", m.raw)
		case m.Event != "snapshot":
			events++
		case !strings.Contains(string(m.Data), `"resync":true`):
			t.Fatalf("slow client snapshot without resync: %s", m.raw)
		default:
			snapshots++
		}
	}
	th.publish("topology."+id+".status", `{"final":true}`)
	if m := slow.next(); m.Event != "status" || !strings.Contains(string(m.Data), `"final":true`) {
		t.Fatalf("after the resync: %.200s", m.raw)
	}
	if th.hub.Stats().Resyncs.Load() == resyncs {
		t.Fatal("no resync counted for the stalled client")
	}
	if snapshots == 0 || events >= burst {
		t.Fatalf("slow client: %d events and %d resync snapshots, want a resync in place of missed events", events, snapshots)
	}
	t.Logf("slow client: %d of %d events, then %d resync snapshot(s)", events, burst, snapshots)
}

// TestWebSocketNoGoroutineLeak: every goroutine of a connection ends with
// it, whichever side closes and how.
func TestWebSocketNoGoroutineLeak(t *testing.T) {
	const cycles, workers = 1000, 4
	th := newTestHub(t, withConfig(func(c *Config) { c.Limiter = hub.NewLocalLimiter(cycles) }))
	topologies := []string{th.newTopology(), th.newTopology()}
	before := goleak.IgnoreCurrent()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		tok := th.token(claim("uuid", fmt.Sprint("leak-", w)))
		wg.Go(func() {
			for i := range cycles / workers {
				if err := wsCycle(th, tok, topologies[i%2], i%3); err != nil {
					errs <- fmt.Errorf("worker %d cycle %d: %w", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every client closed", func() bool { return th.hub.Clients() == 0 })
	var leak error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if leak = goleak.Find(before); leak == nil || time.Now().After(deadline) {
			break
		}
	}
	if leak != nil {
		t.Fatal(leak)
	}
}

// wsCycle connects, subscribes, reads the snapshot and leaves: closing
// cleanly, dropping the connection, or letting the server close it.
func wsCycle(th *testHub, tok, topology string, how int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, th.wsURL(), &websocket.DialOptions{
		HTTPClient: noKeepAlive, HTTPHeader: bearer(tok), Subprotocols: []string{Subprotocol},
	})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"op":"subscribe","id":"1","topology":"`+topology+`"}`)); err != nil {
		return err
	}
	for frames := 0; frames < 2; {
		_, b, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		frames += 1 + bytes.Count(b, []byte("\n"))
	}
	switch how {
	case 0:
		return conn.Close(websocket.StatusNormalClosure, "")
	case 1:
		return conn.CloseNow()
	default:
		// Too big: the server closes.
		_ = conn.Write(ctx, websocket.MessageText, make([]byte, maxControlMessage+1))
		_, _, err := conn.Read(ctx)
		if websocket.CloseStatus(err) != CloseTooBig {
			return fmt.Errorf("read after an oversized message: %v", err)
		}
		return nil
	}
}

func TestCompileOriginsRefusesBadPattern(t *testing.T) {
	if _, err := compileOrigins([]string{"[bad"}); err == nil {
		t.Fatal("accepted a malformed pattern")
	}
	if _, err := New(nil, Config{Auth: AuthConfig{Secret: testSecret}, AllowedOrigins: []string{"[bad"}}); err == nil {
		t.Fatal("New accepted a malformed origin pattern")
	}
}

// gatedSource holds snapshot reads until open is closed, so events are
// logged while a subscribe reads its snapshot and reach the writer in one
// Pop with it.
type gatedSource struct {
	hub.SnapshotSource
	open chan struct{}
}

func (g *gatedSource) Snapshot(ctx context.Context, id string) (hub.Snapshot, error) {
	select {
	case <-g.open:
	case <-ctx.Done():
		return hub.Snapshot{}, ctx.Err()
	}
	return g.SnapshotSource.Snapshot(ctx, id)
}

func TestWebSocketBatchesUpToTheCap(t *testing.T) {
	const limit = 1024
	src := &gatedSource{open: make(chan struct{})}
	th := newTestHub(t,
		withSnapshotWrapper(func(s hub.SnapshotSource) hub.SnapshotSource { src.SnapshotSource = s; return src }),
		withConfig(func(c *Config) { c.MaxMessageBytes = limit }),
	)
	var once sync.Once
	release := func() { once.Do(func() { close(src.open) }) }
	t.Cleanup(release) // a failed test must not leave the writer waiting
	id := th.newTopology()
	c := th.openWS(bearer(th.token()))
	c.send(`{"op":"subscribe","id":"1","topology":"` + id + `"}`)
	// The ack waits in the same Pop as the held snapshot: watch the hub.
	waitFor(t, 10*time.Second, "subscription registered", func() bool {
		subs := 0
		th.hub.ForEachClient(func(cl *hub.Client) { subs += cl.Subscriptions() })
		return subs == 1
	})
	const n = 40
	for i := range n {
		th.publish("topology."+id+".status", fmt.Sprintf(`{"n":%d}`, i))
	}
	big := strings.Repeat("b", 2*limit)
	th.publish("topology."+id+".status", `{"big":"`+big+`"}`)
	th.publish("topology."+id+".status", `{"after":true}`)
	waitFor(t, 10*time.Second, "events logged", func() bool { return th.hub.Stats().Published.Load() >= n+2 })
	release()

	var frames []wsMsg
	var batched bool
	for len(frames) < n+4 { // ack, snapshot, n events, big, after
		msgs, err := c.read(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		size := len(msgs) - 1
		for _, m := range msgs {
			size += len(m.raw)
		}
		if size > limit && len(msgs) > 1 {
			t.Fatalf("message of %d bytes holds %d frames, cap %d", size, len(msgs), limit)
		}
		batched = batched || len(msgs) > 2
		frames = append(frames, msgs...)
	}
	if !batched {
		t.Error("no message held more than two frames")
	}
	if frames[0].Op != "subscribed" || frames[1].Event != "snapshot" {
		t.Fatalf("first frames %s, %s", frames[0].raw, frames[1].raw)
	}
	for i := range n {
		if m := frames[2+i]; !strings.Contains(string(m.Data), fmt.Sprintf(`"payload":{"n":%d}`, i)) {
			t.Fatalf("frame %d: %s", 2+i, m.raw)
		}
	}
	if !strings.Contains(string(frames[n+2].Data), big) || !strings.Contains(string(frames[n+3].Data), `"after":true`) {
		t.Fatal("the large event or the one after it is missing or out of order")
	}
}

// failingSource fails every read of ids starting with "fail-".
type failingSource struct{ hub.SnapshotSource }

func (f failingSource) Exists(ctx context.Context, id string) (bool, error) {
	if strings.HasPrefix(id, "fail-") {
		return false, fmt.Errorf("redis down")
	}
	return f.SnapshotSource.Exists(ctx, id)
}

func (f failingSource) Snapshot(ctx context.Context, id string) (hub.Snapshot, error) {
	if strings.HasPrefix(id, "fail-") {
		return hub.Snapshot{}, fmt.Errorf("redis down")
	}
	return f.SnapshotSource.Snapshot(ctx, id)
}

func TestWebSocketSnapshotSourceFailureIsUnavailable(t *testing.T) {
	th := newTestHub(t, withSnapshotWrapper(func(s hub.SnapshotSource) hub.SnapshotSource { return failingSource{s} }))
	c := th.openWS(bearer(th.token()))
	c.send(`{"op":"subscribe","id":"1","topology":"fail-x"}`)
	if m := c.expectError("unavailable", "1"); m.Topology != "fail-x" {
		t.Fatalf("got %s", m.raw)
	}
	c.subscribe("2", th.newTopology())
}
