package handlers

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"topohub/hub"
)

var (
	sseKeepalive = []byte(": keepalive\n\n")
	sseNotFound  = []byte("event: error\ndata: {\"code\":\"not_found\",\"message\":\"topology not found\"}\n\n")
)

// retryCap is the Retry-After of a 429 for the per-user cap: a slot frees
// when one of the user's streams ends, which nothing here can foresee.
const retryCap = 5 * time.Second

// admit runs the checks every stream passes before it starts, in the
// contract's order: authentication, then (for SSE) the subscription, whose
// snapshot read tells whether the topology exists, so an unauthenticated
// caller cannot probe ids, then the per-user cap. Their Redis calls share
// one deadline, Config.RequestTimeout, which subscribe's ctx carries. On
// refusal it has answered and returns ok=false.
//
// authenticate reads the credentials; nil means Authenticator.Authenticate.
func (s *Server) admit(c *gin.Context, transport string, authenticate func(context.Context) (Principal, error), subscribe func(context.Context, Principal) bool) (p Principal, release func(), ok bool) {
	if s.draining.Load() {
		s.refuse(c, transport, refusedDraining, "hub shutting down")
		abortUnavailable(c, "hub shutting down")
		return p, nil, false
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.RequestTimeout)
	defer cancel()
	if authenticate == nil {
		authenticate = func(ctx context.Context) (Principal, error) { return s.auth.Authenticate(ctx, c) }
	}
	actx, span := s.tracer.Start(ctx, "auth")
	p, err := authenticate(actx)
	endSpan(span, err)
	if err != nil {
		s.refuseAuth(c, transport, err)
		abortAuth(c, err)
		return p, nil, false
	}
	if subscribe != nil {
		sctx, span := s.tracer.Start(ctx, "snapshot.read")
		ok := subscribe(sctx, p)
		if !ok {
			span.SetStatus(codes.Error, "refused")
		}
		span.End()
		if !ok {
			return p, nil, false
		}
	}
	cctx, span := s.tracer.Start(ctx, "admission")
	slot, err := s.cfg.Limiter.Acquire(cctx, p.User)
	endSpan(span, err)
	if err != nil {
		if errors.Is(err, hub.ErrTooManyConnections) {
			s.refuse(c, transport, refusedCap, "too many open streams for this user", "user", p.User)
			abortTooMany(c, retryCap, "too many open streams for this user")
		} else {
			s.refuse(c, transport, refusedUnavailable, "connection limiter unavailable", "err", err)
			abortUnavailable(c, "connection limiter unavailable")
		}
		return p, nil, false
	}
	s.streams.add()
	conns := s.metrics.conns[transport]
	conns.Inc()
	return p, func() { slot(); conns.Dec(); s.streams.done() }, true
}

// refuse counts and logs a handshake refused for reason: never the
// credential, only what the caller is told (detail) and the attributes
// given.
func (s *Server) refuse(c *gin.Context, transport, reason, detail string, attrs ...any) {
	s.metrics.refused.WithLabelValues(transport, reason).Inc()
	level := slog.LevelInfo
	if reason == refusedUnavailable {
		level = slog.LevelError
	}
	args := append([]any{"transport", transport, "reason", reason, "detail", detail, "remote", s.clientIP(c)}, attrs...)
	s.log.Log(c.Request.Context(), level, "handshake refused", args...)
}

// refuseAuth is refuse for a credential that Authenticate refused.
func (s *Server) refuseAuth(c *gin.Context, transport string, err error) {
	var ae *AuthError
	switch {
	case errors.As(err, &ae) && ae.Status == http.StatusForbidden:
		s.refuse(c, transport, refusedForbidden, ae.Message)
	case errors.As(err, &ae):
		s.refuse(c, transport, refusedUnauthorized, ae.Message)
	default:
		s.refuse(c, transport, refusedUnavailable, "credential store unavailable", "err", err)
	}
}

// endSpan ends span, marked failed when err is not nil. Errors are the
// hub's own, never a credential.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// handleSSE serves GET <base>/topologies/:id/events (docs/protocol.md §7).
//
// Like a WebSocket, an open stream costs one goroutine, which waits for
// the client to hang up: once admitted, the connection is hijacked and
// the handler returns (net/http's per-request state goes with it), a
// writer runs only while there is something to write, and keepalives
// and the session's end are timers. The response is HTTP/1.1 chunked
// (HTTP/1.0: ended by closing), as net/http would send it.
func (s *Server) handleSSE(c *gin.Context) {
	start := time.Now()
	// The legacy API traced this route under this name.
	ctx, span := s.tracer.Start(c.Request.Context(), "api.topology.events", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	c.Request = c.Request.WithContext(ctx)
	id := c.Param("id")
	if err := hub.ValidateTopologyID(id); err != nil {
		s.refuse(c, transportSSE, refusedInvalid, "invalid topology id")
		// Before authentication: says nothing about which ids exist. The
		// id is echoed unless it may be a credential (a JWT put here by
		// mistake).
		abortJSON(c, http.StatusBadRequest, redactIn(err.Error(), id))
		return
	}
	var client *hub.Client
	authenticate := func(ctx context.Context) (Principal, error) { return s.auth.authenticateSSE(ctx, c, id) }
	p, release, ok := s.admit(c, transportSSE, authenticate, func(ctx context.Context, p Principal) bool {
		since := c.GetHeader("Last-Event-ID")
		if since == "" {
			since = c.Query("lastEventId")
		}
		client = s.hub.NewClient(p.User)
		err := client.Subscribe(ctx, id, since, nil)
		switch {
		case err == nil:
			return true
		case errors.Is(err, hub.ErrNotFound):
			s.refuse(c, transportSSE, refusedNotFound, "topology not found")
			abortJSON(c, http.StatusNotFound, "topology not found")
		default:
			s.refuse(c, transportSSE, refusedUnavailable, "snapshot source unavailable", "topology", redactSegment(id), "err", err)
			abortUnavailable(c, "snapshot source unavailable")
		}
		client.Close()
		return false
	})
	if !ok {
		if client != nil {
			client.Close() // subscribed, then refused by the cap
		}
		return
	}
	s.metrics.handshakeDone(transportSSE, start)
	client.SetTokenID(p.JTI)
	s.setResumeCookie(c, p, id)
	sc := &sseConn{s: s, client: client, chunked: c.Request.ProtoAtLeast(1, 1), header: c.Writer.Header()}
	c.Status(http.StatusOK) // for the access log
	conn, _, err := c.Writer.Hijack()
	if err != nil {
		s.log.Error("sse stream not started", "err", err)
		client.Close()
		release()
		return
	}
	s.limitSendBuffer(conn)
	sc.conn = conn
	if err := sc.start(); err != nil {
		_ = conn.Close()
		client.Close()
		release()
		return
	}
	client.SetWake(sc.wake)
	sc.keepalive = time.AfterFunc(aligned(s.cfg.Keepalive), sc.keep)
	sc.expiry = sessionTimer(p.Expires, func() { client.Disconnect(hub.DisconnectExpired) })
	if s.draining.Load() {
		// Drain ran between admit and NewClient and did not see us.
		client.Disconnect(hub.DisconnectShutdown)
	}
	go sc.serve(release)
}

// sseHead is the response head of every stream, with its first bytes (a
// keepalive comment, flushed at once) for HTTP/1.1; sseHead10 for
// HTTP/1.0, whose body ends when the connection closes.
var (
	sseHead   = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n: keepalive\n\n\r\n")
	sseHead10 = []byte("HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n: keepalive\n\n")
	sseEnd    = []byte("0\r\n\r\n")
)

// sseConn is one hijacked SSE stream.
type sseConn struct {
	s       *Server
	conn    net.Conn
	client  *hub.Client
	chunked bool
	header  http.Header // set by the route before the hijack: cookie, CORS

	keepalive, expiry *time.Timer
	// writing is set while a writer runs, and for good once the stream
	// is ending; closed once the reader has cleaned up.
	writing, closed atomic.Bool
}

func (sc *sseConn) start() error {
	head := sseHead
	if !sc.chunked {
		head = sseHead10
	}
	return sc.write(withHeaders(head, sc.header))
}

// withHeaders inserts h's fields after head's status line: the headers
// the route set (resume cookie, CORS) before the connection was hijacked.
func withHeaders(head []byte, h http.Header) []byte {
	if len(h) == 0 {
		return head
	}
	i := bytes.Index(head, []byte("\r\n")) + 2
	var b bytes.Buffer
	b.Write(head[:i])
	_ = h.Write(&b)
	b.Write(head[i:])
	return b.Bytes()
}

// write sends b in one system call within Config.WriteTimeout.
func (sc *sseConn) write(b []byte) error {
	_ = sc.conn.SetWriteDeadline(time.Now().Add(sc.s.cfg.WriteTimeout))
	_, err := sc.conn.Write(b)
	return err
}

// serve waits for the client to hang up (an SSE client sends nothing
// after its request), then releases everything.
func (sc *sseConn) serve(release func()) {
	defer release()
	var b [64]byte
	for {
		if _, err := sc.conn.Read(b[:]); err != nil {
			break
		}
	}
	sc.closed.Store(true)
	sc.keepalive.Stop()
	sc.expiry.Stop()
	_ = sc.conn.Close()
	sc.client.Close()
}

// wake starts a writer unless one is running.
func (sc *sseConn) wake() {
	if sc.writing.CompareAndSwap(false, true) {
		go sc.writeLoop()
	}
}

// writeLoop writes what the client's queue holds, each batch in one
// chunk, then exits; when the hub ends the client, or its topology is
// gone, it ends the stream.
func (sc *sseConn) writeLoop() {
	b := writeBuffers.Get().(*writeBuffer)
	defer b.put(4 * sc.s.cfg.MaxMessageBytes)
	for {
		if sc.client.Reason() != hub.DisconnectNone {
			sc.end() // writing stays set: nothing follows the end
			return
		}
		var err error
		b.items, err = sc.client.Pop(context.Background(), b.items[:0])
		if err != nil {
			sc.s.logSnapshotRetry(err)
		}
		if len(b.items) > 0 {
			gone := false
			b.msg = append(b.msg[:0], make([]byte, maxChunkHeader)...)
			for _, it := range b.items {
				switch {
				case it.Event != nil:
					b.msg = append(b.msg, it.Event.SSEFrame()...)
				case it.Err != nil:
					b.msg = append(b.msg, sseNotFound...)
					gone = true
				}
			}
			clear(b.items)
			if err := sc.write(sc.chunk(b.msg)); err != nil || gone {
				if gone {
					sc.end()
				} else {
					discardUnsent(sc.conn, err, sc.s.metrics.slowDrops[transportSSE])
				}
				_ = sc.conn.Close() // the reader sees it and cleans up
				return
			}
			continue
		}
		sc.writing.Store(false)
		if !sc.client.Pending() && sc.client.Reason() == hub.DisconnectNone {
			return
		}
		if !sc.writing.CompareAndSwap(false, true) {
			return
		}
	}
}

// maxChunkHeader is room for a chunk's size line: 8 hex digits and CRLF.
const maxChunkHeader = 10

// chunk frames msg (payload after maxChunkHeader reserved bytes) as one
// HTTP chunk, or returns the payload alone for HTTP/1.0.
func (sc *sseConn) chunk(msg []byte) []byte {
	if !sc.chunked {
		return msg[maxChunkHeader:]
	}
	n := len(msg) - maxChunkHeader
	var size [8]byte
	hex := strconv.AppendInt(size[:0], int64(n), 16)
	start := maxChunkHeader - len(hex) - 2
	copy(msg[start:], hex)
	msg[maxChunkHeader-2], msg[maxChunkHeader-1] = '\r', '\n'
	return append(msg[start:], '\r', '\n')
}

// end finishes the response and closes the connection.
func (sc *sseConn) end() {
	if sc.chunked {
		_ = sc.write(sseEnd)
	}
	_ = sc.conn.Close()
}

// keep writes a keepalive comment every Config.Keepalive, unless a writer
// is running (then the stream is not idle).
func (sc *sseConn) keep() {
	if sc.closed.Load() {
		return
	}
	if sc.writing.CompareAndSwap(false, true) {
		b := append(make([]byte, maxChunkHeader, maxChunkHeader+len(sseKeepalive)+2), sseKeepalive...)
		err := sc.write(sc.chunk(b))
		sc.writing.Store(false)
		if err != nil {
			discardUnsent(sc.conn, err, sc.s.metrics.slowDrops[transportSSE])
			_ = sc.conn.Close()
			return
		}
		if sc.client.Pending() || sc.client.Reason() != hub.DisconnectNone {
			sc.wake() // something arrived while the comment was written
		}
	}
	sc.keepalive.Reset(aligned(sc.s.cfg.Keepalive))
}

// logSnapshotRetry logs a resync snapshot that could not be read (the hub
// retries it by itself), at most a few times per interval.
func (s *Server) logSnapshotRetry(err error) {
	s.logRetries.Do(func() { s.log.Warn("snapshot read failed; retrying", "err", err) })
}

// sessionTimer runs end when the session ends; never when exp is zero.
func sessionTimer(exp time.Time, end func()) *time.Timer {
	t := time.AfterFunc(time.Hour, end)
	t.Stop()
	if !exp.IsZero() {
		t.Reset(time.Until(exp))
	}
	return t
}
