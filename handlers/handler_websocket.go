package handlers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"topohub/hub"
)

// Subprotocol is the WebSocket subprotocol of docs/protocol.md §8. A client that
// offers none is served as topohub.v1 too.
const Subprotocol = "topohub.v1"

// Close codes of the WebSocket route (docs/protocol.md §8), each with what the
// client should do next.
const (
	// CloseNormal (1000): the connection ended in an orderly way.
	// Reconnect if still needed.
	CloseNormal = websocket.StatusNormalClosure
	// CloseGoingAway (1001): the hub is shutting down. Reconnect with
	// backoff, to another instance or to this one once it is back; resume
	// with the last cursor of each topology.
	CloseGoingAway = websocket.StatusGoingAway
	// ClosePolicy (1008): sustained abuse of the control channel (more
	// than Config.MaxControlViolations rate_limited replies in 10 s).
	// Reconnecting at once is pointless: fix the client.
	ClosePolicy = websocket.StatusPolicyViolation
	// CloseTooBig (1009): a client message over 4 KiB. Do not send it
	// again; reconnecting is fine.
	CloseTooBig = websocket.StatusMessageTooBig
	// CloseInvalidData (1007): a text message, or the reason of a close
	// frame, that is not valid UTF-8 (RFC 6455 §8.1). Fix the client.
	CloseInvalidData = websocket.StatusInvalidFramePayloadData
	// CloseCredentials (4001): the session ended: the token's exp (or the
	// exp of the token a ticket was minted from) passed without a refresh,
	// or the token was revoked. Reconnect only with fresh credentials.
	CloseCredentials websocket.StatusCode = 4001
)

// closeForReason maps why the hub ended a client to a close code and a
// short reason (at most 125 bytes on the wire).
func closeForReason(r hub.DisconnectReason) (websocket.StatusCode, string) {
	switch r {
	case hub.DisconnectShutdown:
		return CloseGoingAway, "hub shutting down"
	case hub.DisconnectExpired:
		return CloseCredentials, "credentials expired"
	case hub.DisconnectRevoked:
		return CloseCredentials, "credentials revoked"
	case hub.DisconnectPolicy:
		return ClosePolicy, "policy violation"
	}
	return CloseNormal, ""
}

// controlAbuseWindow is the window over which Config.MaxControlViolations
// counts rate_limited replies.
const controlAbuseWindow = 10 * time.Second

// errInvalidUTF8 ends the read loop when a text message is not UTF-8.
var errInvalidUTF8 = errors.New("text message is not valid UTF-8")

// originPattern is one entry of Config.AllowedOrigins, lower-cased.
type originPattern struct {
	pattern    string
	withScheme bool // matched against scheme://host rather than host
}

// compileOrigins checks the allow-list once, so a bad pattern fails at
// start-up rather than refusing every browser.
func compileOrigins(list []string) ([]originPattern, error) {
	out := make([]originPattern, 0, len(list))
	for _, p := range list {
		p = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(p), "/"))
		if p == "" {
			continue
		}
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("allowed origin %q: %w", p, err)
		}
		out = append(out, originPattern{pattern: p, withScheme: strings.Contains(p, "://")})
	}
	return out, nil
}

// originAllowed applies Config.AllowedOrigins to the handshake: no Origin
// (not a browser) or the public host (the request's own, or the one a
// trusted proxy names) is allowed, anything else must match a pattern of
// AllowedOrigins or CORSOrigins (a page that may mint tickets across
// origins may use them on the WebSocket too; refusing it would only push
// it to the SSE fallback, one stream slot per topology).
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, ok := parseOrigin(origin)
	if !ok {
		return false
	}
	return s.sameOrigin(r, u) || matchOrigin(s.origins, u) || matchOrigin(s.corsOrigins, u)
}

// parseOrigin reads an Origin header; "null" and anything without a host
// are refused.
func parseOrigin(origin string) (*url.URL, bool) {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return nil, false
	}
	return u, true
}

// sameOrigin reports whether the Origin u names the host the browser
// reached: the request's Host, or the public host a trusted proxy gives
// (X-Forwarded-Host, Forwarded host=).
func (s *Server) sameOrigin(r *http.Request, u *url.URL) bool {
	host, _ := s.proxies.publicHost(r)
	return strings.EqualFold(u.Host, host)
}

// matchOrigin applies an allow-list to the Origin u.
func matchOrigin(patterns []originPattern, u *url.URL) bool {
	host := strings.ToLower(u.Host)
	full := strings.ToLower(u.Scheme) + "://" + host
	for _, p := range patterns {
		target := host
		if p.withScheme {
			target = full
		}
		if ok, _ := path.Match(p.pattern, target); ok {
			return true
		}
	}
	return false
}

// handleWebSocket serves GET <base>/ws (docs/protocol.md §8): one connection, many
// topologies.
//
// An idle connection costs one goroutine, its reader: the handler returns
// once the handshake is done (so net/http's and gin's per-request state
// goes), a writer runs only while the client has something to write
// (Client.SetWake starts it), and the keepalive and the session's end are
// timers. Everything the client receives goes through the client's queue
// and that one writer at a time, so replies and events keep their order.
func (s *Server) handleWebSocket(c *gin.Context) {
	start := time.Now()
	ctx, span := s.tracer.Start(c.Request.Context(), "api.ws.handshake", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	c.Request = c.Request.WithContext(ctx)
	// The origin is checked before admit, so a refused page does not spend
	// a single-use ticket.
	if !s.originAllowed(c.Request) {
		s.refuse(c, transportWS, refusedOrigin, "origin not allowed", "origin", redactSegment(c.GetHeader("Origin")))
		abortJSON(c, http.StatusForbidden, "origin not allowed")
		return
	}
	p, release, ok := s.admit(c, transportWS, nil, nil)
	if !ok {
		return
	}
	s.metrics.handshakeDone(transportWS, start)

	hj := &hijackCapture{ResponseWriter: c.Writer}
	ws := &wsConn{s: s, user: p.User}
	conn, err := websocket.Accept(hj, c.Request, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Checked above with the same rules.
		InsecureSkipVerify: true,
		OnPingReceived:     ws.onPing,
		OnPongReceived:     ws.pong,
	})
	if err != nil {
		// Accept has answered (426 and the like for a request that is not
		// a handshake). Its error names headers, never credentials.
		s.log.Debug("websocket handshake failed", "err", err)
		release()
		return
	}
	if hj.conn == nil {
		// Cannot happen with net/http: Accept hijacks through hj.
		s.log.Error("websocket accepted without a hijacked connection")
		_ = conn.CloseNow()
		release()
		return
	}
	conn.SetReadLimit(maxControlMessage)

	s.limitSendBuffer(hj.conn)
	ws.conn, ws.netConn, ws.lingerConn, ws.gate = conn, hj.conn, hj.linger, &hj.gate
	ws.client = s.hub.NewClient(p.User)
	ws.limiter = rate.NewLimiter(s.cfg.ControlRate, s.cfg.ControlBurst)
	ws.client.SetTokenID(p.JTI)
	ws.client.SetWake(ws.wake)
	ws.setExpires(p.Expires)
	ws.expiry = sessionTimer(time.Time{}, ws.expire)
	ws.rearmExpiry()
	ws.pinger = time.AfterFunc(aligned(s.cfg.Keepalive), ws.keepalive)
	if s.draining.Load() {
		// Drain ran between admit and NewClient and did not see us.
		ws.client.Disconnect(hub.DisconnectShutdown)
	}
	go ws.serve(release)
}

// wsConn is one WebSocket connection's state.
type wsConn struct {
	s       *Server
	conn    *websocket.Conn
	netConn net.Conn // the hijacked connection, written directly
	// lingerConn is the same connection as the library holds it: its
	// Close lingers unless a timed-out write made it abortive.
	lingerConn *lingerConn
	gate       *wsGate // orders the writes of the hub and the library
	client     *hub.Client
	user       string
	// closed is set when the reader has ended: timers stop re-arming.
	// (Not a context: every call context derived from one would register
	// in, and keep, a children map per connection.)
	closed atomic.Bool

	// expires is the session's end in Unix nanoseconds (0: none). The
	// read loop moves it on refresh and re-arms expiry; expire re-reads it
	// when the timer fires, so a refresh racing the timer is never lost.
	expires atomic.Int64
	expiry  *time.Timer
	pinger  *time.Timer
	// pingSent is when the outstanding ping was written (Unix nanoseconds,
	// 0: none); pongAt when the newest pong arrived.
	pingSent, pongAt atomic.Int64

	// writing is set while a writer goroutine runs (or the connection is
	// closing and no writer may start); closing once a close frame is
	// being sent.
	writing, closing atomic.Bool
	// abused is set when the control channel was abused: the writer
	// writes what is queued (the rate_limited replies among it) and then
	// closes with 1008.
	abused atomic.Bool

	// Read loop only (onPing runs on it too).
	limiter     *rate.Limiter
	violations  int
	windowStart time.Time
	readErr     error
}

func (ws *wsConn) setExpires(t time.Time) {
	if t.IsZero() {
		ws.expires.Store(0)
		return
	}
	ws.expires.Store(t.UnixNano())
}

func (ws *wsConn) expiresAt() time.Time {
	if n := ws.expires.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// rearmExpiry sets the session timer to the session's end.
func (ws *wsConn) rearmExpiry() {
	ws.expiry.Stop()
	if exp := ws.expiresAt(); !exp.IsZero() {
		ws.expiry.Reset(time.Until(exp))
	}
}

// expire ends the session unless a refresh moved its end meanwhile.
func (ws *wsConn) expire() {
	if exp := ws.expiresAt(); !exp.IsZero() && time.Now().Before(exp) {
		ws.expiry.Reset(time.Until(exp))
		return
	}
	ws.client.Disconnect(hub.DisconnectExpired)
}

// serve is the connection's reader, and its one long-lived goroutine:
// it handles control messages until the connection ends, then releases
// everything.
func (ws *wsConn) serve(release func()) {
	defer release()
	ws.readLoop()
	switch {
	case errors.Is(ws.readErr, errInvalidUTF8):
		ws.closeWith(CloseInvalidData, "invalid UTF-8")
	case errors.Is(ws.readErr, websocket.ErrMessageTooBig):
		// The library has sent the close frame; Close completes the
		// handshake.
		ws.closeWith(CloseTooBig, "message too big")
	}
	ws.closed.Store(true)
	ws.pinger.Stop()
	ws.expiry.Stop()
	_ = ws.conn.CloseNow()
	ws.client.Close()
	ws.s.log.Debug("websocket closed", "code", int(websocket.CloseStatus(ws.readErr)))
}

// wake starts a writer unless one is running; the hub calls it when the
// client has something to write or is ended.
func (ws *wsConn) wake() {
	if ws.writing.CompareAndSwap(false, true) {
		go ws.writeLoop()
	}
}

// writeBuffers hold a writer's outgoing message while it runs, for both
// transports; an idle connection holds none.
var writeBuffers = sync.Pool{New: func() any { return new(writeBuffer) }}

type writeBuffer struct {
	msg   []byte
	items []hub.Item
}

// put returns b to the pool unless a burst made it larger than keep.
func (b *writeBuffer) put(keep int) {
	clear(b.items)
	if cap(b.msg) <= keep && cap(b.items) <= 4096 {
		b.msg, b.items = b.msg[:0], b.items[:0]
		writeBuffers.Put(b)
	}
}

// writeLoop writes what the client's queue holds until it is empty, then
// exits; when the hub ends the client it closes the connection with the
// reason's code.
func (ws *wsConn) writeLoop() {
	b := writeBuffers.Get().(*writeBuffer)
	defer b.put(4 * ws.s.cfg.MaxMessageBytes)
	for {
		if r := ws.client.Reason(); r != hub.DisconnectNone {
			// writing stays set: no writer starts after the close.
			ws.closeWith(closeForReason(r))
			return
		}
		if ws.closing.Load() {
			return // the reader is closing: nothing may follow its close frame
		}
		var err error
		// A snapshot read is bounded by the hub; a connection that ends
		// meanwhile only makes the write after it fail.
		b.items, err = ws.client.Pop(context.Background(), b.items[:0])
		if err != nil {
			ws.s.logSnapshotRetry(err)
		}
		if len(b.items) > 0 {
			if b.msg, err = ws.writeItems(b.msg, b.items); err != nil {
				discardUnsent(ws.lingerConn, err, ws.s.metrics.slowDrops[transportWS])
				_ = ws.conn.CloseNow() // the reader sees it and cleans up
				return
			}
			clear(b.items)
			continue
		}
		if ws.abused.Load() {
			// The replies are out; writing stays set: nothing follows.
			ws.closeWith(ClosePolicy, "control channel abuse")
			return
		}
		ws.clearDeadline() // before another writer may arm its own
		ws.writing.Store(false)
		if !ws.client.Pending() && ws.client.Reason() == hub.DisconnectNone && !ws.abused.Load() {
			return
		}
		if !ws.writing.CompareAndSwap(false, true) {
			return // another writer took over
		}
	}
}

// writeItems writes the popped items as few messages as the size cap
// allows: frames joined by newlines in buf after room for the message
// header, which is returned for reuse.
func (ws *wsConn) writeItems(buf []byte, items []hub.Item) ([]byte, error) {
	limit := ws.s.cfg.MaxMessageBytes
	buf = append(buf[:0], make([]byte, maxHeader)...)
	for _, it := range items {
		var frame []byte
		switch {
		case it.Event != nil:
			frame = it.Event.WSFrame()
		case it.Raw != nil:
			frame = it.Raw
		case it.Err != nil:
			// The topology is gone and the hub ended its subscription.
			frame = appendError(nil, nil, it.Topology, codeNotFound, "topology not found")
		default:
			continue
		}
		if len(buf) > maxHeader && len(buf)-maxHeader+1+len(frame) > limit {
			if err := ws.write(buf); err != nil {
				return buf, err
			}
			buf = buf[:maxHeader]
		}
		if len(frame) > hub.MaxWSMessage && it.Event != nil {
			// Bus events that large are dropped by the decoder; this is a
			// snapshot (thousands of in-flight mutations). Clients at
			// their default read limit would close with 1009.
			ws.s.metrics.oversized.Inc()
			ws.s.logOversized.Do(func() {
				ws.s.log.Warn("websocket frame over 1 MiB not sent", "topology", it.Event.Topology, "event", it.Event.Name, "bytes", len(frame))
			})
			continue
		}
		if len(frame) >= limit {
			// Alone anyway: write the shared bytes without copying them.
			if err := ws.writeShared(frame); err != nil {
				return buf, err
			}
			continue
		}
		if len(buf) > maxHeader {
			buf = append(buf, '\n')
		}
		buf = append(buf, frame...)
	}
	if len(buf) > maxHeader {
		if err := ws.write(buf); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// maxHeader is the longest header of an unmasked WebSocket frame.
const maxHeader = 10

// putHeader writes the header of a final text frame of n payload bytes
// at the end of dst (maxHeader bytes) and returns where it starts.
func putHeader(dst []byte, n int) int {
	switch {
	case n < 126:
		dst[8], dst[9] = 0x81, byte(n)
		return 8
	case n <= 0xFFFF:
		dst[6], dst[7] = 0x81, 126
		binary.BigEndian.PutUint16(dst[8:], uint16(n))
		return 6
	default:
		dst[0], dst[1] = 0x81, 127
		binary.BigEndian.PutUint64(dst[2:], uint64(n))
		return 0
	}
}

// write sends msg (payload after maxHeader reserved bytes) as one text
// message in one system call, bounded by Config.WriteTimeout through the
// connection's deadline: no context, timer or lock of the library per
// message. Every frame on the connection, the library's included, goes
// out in a single write, so none can interleave with another.
func (ws *wsConn) write(msg []byte) error {
	start := putHeader(msg[:maxHeader], len(msg)-maxHeader)
	ws.armDeadline()
	return ws.gate.write(ws.netConn, msg[start:])
}

// writeShared sends a frame shared with other subscribers as one message
// without copying it: header and payload in one vectored write.
func (ws *wsConn) writeShared(frame []byte) error {
	var hdr [maxHeader]byte
	start := putHeader(hdr[:], len(frame))
	ws.armDeadline()
	bufs := net.Buffers{hdr[start:], frame}
	return ws.gate.writeBuffers(ws.netConn, &bufs)
}

// armDeadline bounds the next write by Config.WriteTimeout. A writer
// arms it before each message and clears it when it leaves, so it never
// stands expired when the library writes on its own (pongs, and close
// frames such as the 1009 it sends from the reader), which its own
// contexts bound.
func (ws *wsConn) armDeadline() {
	_ = ws.netConn.SetWriteDeadline(time.Now().Add(ws.s.cfg.WriteTimeout))
}

func (ws *wsConn) clearDeadline() { _ = ws.netConn.SetWriteDeadline(time.Time{}) }

// closeWith starts the close handshake with code; after it no message
// may follow.
func (ws *wsConn) closeWith(code websocket.StatusCode, reason string) {
	if !ws.closing.Swap(true) {
		if c := ws.s.metrics.closes[code]; c != nil {
			c.Inc()
		}
	}
	ws.clearDeadline() // the library bounds its close handshake itself
	_ = ws.conn.Close(code, reason)
}

// onPing lets the library answer a client's ping. A ping is a control message like any other: it
// takes a token of the control rate, and over it is answered rate_limited
// instead of a pong and counts as a violation, so a ping flood ends with
// 1008 as a message flood does. The library calls it on the reader
// goroutine, which owns the limiter and the violation count; the close
// runs on its own goroutine, since the close handshake needs the reader
// to go on reading.
func (ws *wsConn) onPing(context.Context, []byte) bool {
	if ws.abused.Load() {
		return false
	}
	if !ws.limiter.Allow() {
		ws.s.metrics.rateLimited.Inc()
		ws.reply(appendError(nil, nil, "", codeRateLimited, "too many control messages; slow down"))
		ws.countViolation()
		return false
	}
	return true
}

// countViolation counts a rate_limited reply; over
// Config.MaxControlViolations the writer closes with 1008 once the
// replies queued before are written, and the reader goes on reading
// (ignoring everything) so that the close handshake completes.
func (ws *wsConn) countViolation() {
	if ws.violation() {
		ws.abused.Store(true)
		ws.wake()
	}
}

// pingFrame is a WebSocket ping from the server: FIN, opcode 9, no
// payload, unmasked.
var pingFrame = []byte{0x89, 0x00}

// keepalive runs on the keepalive timer, in two steps: it writes a ping
// and comes back after Config.WriteTimeout to check that a pong arrived
// since; a client that did not answer is cut off (its reader then cleans
// up). The ping is written straight to the connection rather than with
// the library's Ping, which would park a goroutine, two contexts and
// their timers on every connection for every round trip. While a writer
// runs, its write deadline watches the client instead.
func (ws *wsConn) keepalive() {
	if ws.closed.Load() {
		return
	}
	cfg := &ws.s.cfg
	if sent := ws.pingSent.Swap(0); sent != 0 {
		if ws.pongAt.Load() < sent {
			ws.s.log.Debug("websocket ping unanswered")
			discardUnsent(ws.lingerConn, os.ErrDeadlineExceeded, ws.s.metrics.slowDrops[transportWS])
			_ = ws.conn.CloseNow()
			return
		}
		ws.pinger.Reset(aligned(max(cfg.Keepalive-cfg.WriteTimeout, 0)))
		return
	}
	if !ws.writing.Load() && !ws.closing.Load() {
		now := time.Now()
		ws.armDeadline()
		err := ws.gate.write(ws.netConn, pingFrame)
		ws.clearDeadline()
		if err != nil {
			discardUnsent(ws.lingerConn, err, ws.s.metrics.slowDrops[transportWS])
			_ = ws.conn.CloseNow()
			return
		}
		ws.pingSent.Store(now.UnixNano())
		ws.pinger.Reset(aligned(min(cfg.WriteTimeout, cfg.Keepalive)))
		return
	}
	ws.pinger.Reset(aligned(cfg.Keepalive))
}

// keepaliveGrain is what keepalive timers are rounded up to: those due
// within it fire together, so 10,000 idle connections wake the process
// 50 times a second rather than 700. Not coarser: at 250 ms each tick
// wrote ~170 pings at once, and the deliveries queued behind those
// bursts were the fan-out's latency tail (p99 7 ms against 3.8 ms with
// no keepalive at all; 3.9 ms at 20 ms, for the same idle CPU).
const keepaliveGrain = 20 * time.Millisecond

// aligned returns d, lengthened so that it ends on a keepaliveGrain
// boundary.
func aligned(d time.Duration) time.Duration {
	now := time.Now()
	end := now.Add(d + keepaliveGrain - 1).Truncate(keepaliveGrain)
	return end.Sub(now)
}

// pong records a pong (the library calls it from the reader).
func (ws *wsConn) pong(context.Context, []byte) { ws.pongAt.Store(time.Now().UnixNano()) }

// readLoop handles control messages until the connection fails or the
// control channel is abused. Replies go through the client's queue, so
// the writer sends them in order with the events.
func (ws *wsConn) readLoop() {
	for {
		// No deadline: cancelling a read closes the connection, and the
		// close handshake needs it open. The read ends when the
		// connection does.
		typ, msg, err := ws.conn.Read(context.Background())
		if err != nil {
			ws.readErr = err
			return
		}
		if ws.abused.Load() {
			continue // closing with 1008; nothing more is acted on
		}
		if typ == websocket.MessageText && !utf8.Valid(msg) {
			// The library does not check; RFC 6455 §8.1 says fail.
			ws.readErr = errInvalidUTF8
			return
		}
		if !ws.limiter.Allow() {
			f, _ := decodeControl(msg)
			ws.s.metrics.rateLimited.Inc()
			ws.reply(appendError(nil, f.ID, "", codeRateLimited, "too many control messages; slow down"))
			ws.countViolation()
			continue
		}
		if typ != websocket.MessageText {
			ws.reply(appendError(nil, nil, "", codeBadRequest, "messages must be text"))
			continue
		}
		ws.handle(msg)
	}
}

// violation counts one rate_limited reply and reports whether the
// connection is now over Config.MaxControlViolations in the window.
func (ws *wsConn) violation() bool {
	now := time.Now()
	if now.Sub(ws.windowStart) > controlAbuseWindow {
		ws.windowStart, ws.violations = now, 0
	}
	ws.violations++
	return ws.violations > ws.s.cfg.MaxControlViolations
}

func (ws *wsConn) reply(frame []byte) { ws.client.Send(frame) }

// handle answers one control message.
func (ws *wsConn) handle(msg []byte) {
	f, cerr := decodeControl(msg)
	if cerr != nil {
		ws.reply(appendError(nil, f.ID, f.Topology, cerr.Code, cerr.Message))
		return
	}
	switch f.Op {
	case opPing:
		ws.reply(appendReply(nil, "pong", f.ID, ""))
	case opSubscribe:
		ws.subscribe(f)
	case opUnsubscribe:
		ws.client.Unsubscribe(f.Topology, appendReply(nil, "unsubscribed", f.ID, f.Topology))
	case opRefresh:
		ws.refresh(f)
	}
}

// callContext bounds a Redis call made by the read loop by
// Config.RequestTimeout, and at most half the pong wait: pongs are only
// read while the loop reads, so a stalled Redis must not make a healthy
// client look dead.
func (ws *wsConn) callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), min(ws.s.cfg.RequestTimeout, ws.s.cfg.WriteTimeout/2))
}

// subscribe registers the subscription; the hub reads the snapshot (which
// also tells whether the topology exists) and queues the ack ahead of it
// or of the replayed events.
func (ws *wsConn) subscribe(f controlFrame) {
	cctx, cancel := ws.callContext()
	err := ws.client.Subscribe(cctx, f.Topology, f.Since, appendReply(nil, "subscribed", f.ID, f.Topology))
	cancel()
	switch {
	case err == nil, errors.Is(err, hub.ErrClientClosed):
	case errors.Is(err, hub.ErrNotFound):
		ws.reply(appendError(nil, f.ID, f.Topology, codeNotFound, "topology not found"))
	case errors.Is(err, hub.ErrTooManySubscriptions):
		ws.reply(appendError(nil, f.ID, f.Topology, codeTooManySubscriptions, "too many subscriptions on this connection"))
	case errors.Is(err, hub.ErrInvalidTopology):
		ws.reply(appendError(nil, f.ID, f.Topology, codeInvalidTopology, "invalid topology id"))
	case !ws.closed.Load():
		ws.s.log.Error("snapshot read failed", "topology", f.Topology, "err", err)
		ws.reply(appendError(nil, f.ID, f.Topology, codeUnavailable, "snapshot source unavailable; retry"))
	}
}

// refresh re-verifies fresh credentials and, when they are the same
// user's, moves the session's end to theirs. On refusal nothing changes.
func (ws *wsConn) refresh(f controlFrame) {
	var p Principal
	var err error
	cctx, cancel := ws.callContext()
	if f.Ticket != "" {
		p, err = ws.s.auth.RedeemTicket(cctx, f.Ticket)
	} else if p, err = ws.s.auth.VerifyToken(f.Token); err == nil {
		err = ws.s.auth.CheckRevoked(cctx, p)
	}
	cancel()
	if err != nil {
		var ae *AuthError
		switch {
		case errors.As(err, &ae):
			ws.s.log.Info("refresh refused", "reason", "credentials", "detail", ae.Message)
			ws.reply(appendError(nil, f.ID, "", codeForbidden, ae.Message))
		case !ws.closed.Load():
			ws.s.log.Error("credential check failed", "err", err)
			ws.reply(appendError(nil, f.ID, "", codeUnavailable, "credential store unavailable; retry"))
		}
		return
	}
	if p.User != ws.user {
		ws.s.log.Info("refresh refused", "reason", "another_user", "user", ws.user)
		ws.reply(appendError(nil, f.ID, "", codeForbidden, "credentials belong to another user"))
		return
	}
	ws.client.SetTokenID(p.JTI)
	ws.setExpires(p.Expires)
	ws.rearmExpiry()
	ws.reply(appendRefreshed(nil, f.ID, p.Expires))
}
