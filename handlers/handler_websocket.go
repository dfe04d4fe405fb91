package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/gin-gonic/gin"
	"golang.org/x/time/rate"

	"topohub/hub"
)

// Subprotocol is the WebSocket subprotocol of PROTOCOL §8. A client that
// offers none is served as topohub.v1 too.
const Subprotocol = "topohub.v1"

// Close codes of the WebSocket route (PROTOCOL §8), each with what the
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

// errControlAbuse ends the read loop when the control channel is abused.
var errControlAbuse = errors.New("control channel abused")

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
// (not a browser) or the request's own host is allowed, anything else
// must match a pattern.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	host := strings.ToLower(u.Host)
	full := strings.ToLower(u.Scheme) + "://" + host
	for _, p := range s.origins {
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

// handleWebSocket serves GET <base>/ws (PROTOCOL §8): one connection, many
// topologies.
//
// Three goroutines serve a connection and all end with it: this one
// writes (everything the client receives goes through the client's queue
// and this one writer, so replies and events keep their order), readLoop
// handles control messages, and keepalive pings.
func (s *Server) handleWebSocket(c *gin.Context) {
	// The origin is checked before admit, so a refused page does not spend
	// a single-use ticket.
	if !s.originAllowed(c.Request) {
		abortJSON(c, http.StatusForbidden, "origin not allowed")
		return
	}
	p, release, ok := s.admit(c, "")
	if !ok {
		return
	}
	defer release()

	conn, err := websocket.Accept(c.Writer, c.Request, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Checked above with the same rules.
		InsecureSkipVerify: true,
	})
	if err != nil {
		// Accept has answered (426 and the like for a request that is not
		// a handshake). Its error names headers, never credentials.
		s.log.Debug("websocket handshake failed", "err", err)
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxControlMessage)

	client := s.hub.NewClient(p.User)
	defer client.Close()
	client.SetTokenID(p.JTI)
	if s.draining.Load() {
		// Drain ran between admit and NewClient and did not see us.
		client.Disconnect(hub.DisconnectShutdown)
	}

	// Not the request's context: after the hijack net/http no longer
	// watches the connection, and the context ends with this handler.
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.Request.Context()))
	defer cancel()
	ws := &wsConn{
		s:        s,
		conn:     conn,
		client:   client,
		user:     p.User,
		limiter:  rate.NewLimiter(s.cfg.ControlRate, s.cfg.ControlBurst),
		rearm:    make(chan struct{}, 1),
		readDone: make(chan struct{}),
		dead:     make(chan struct{}, 1),
	}
	ws.setExpires(p.Expires)

	var wg sync.WaitGroup
	wg.Go(func() { ws.readLoop(ctx) })
	wg.Go(func() { ws.keepalive(ctx) })
	code, reason, handshake := ws.writeLoop(ctx)
	if handshake {
		// Close waits for the client's close frame (at most 5 s), which the
		// read loop receives; ctx must stay alive until then.
		_ = conn.Close(code, reason)
	} else {
		_ = conn.CloseNow()
	}
	cancel()
	wg.Wait()
	s.log.Debug("websocket closed", "code", int(code), "reason", reason)
}

// wsConn is one WebSocket connection's state.
type wsConn struct {
	s      *Server
	conn   *websocket.Conn
	client *hub.Client
	user   string

	// expires is the session's end in Unix nanoseconds (0: none). The
	// read loop moves it on refresh and pokes rearm; the writer owns the
	// timer and re-reads it whenever the timer fires, so a refresh racing
	// the timer is never lost.
	expires atomic.Int64
	rearm   chan struct{}

	// Read loop only.
	limiter     *rate.Limiter
	violations  int
	windowStart time.Time

	readDone chan struct{} // closed when the read loop ends; readErr is set
	readErr  error
	dead     chan struct{} // the client did not answer a ping
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

// writeLoop writes what the client's queue holds until the connection
// must end, and says how to close it: with a close handshake and code, or
// at once (the peer is gone or not answering).
func (ws *wsConn) writeLoop(ctx context.Context) (code websocket.StatusCode, reason string, handshake bool) {
	cfg := &ws.s.cfg
	expiry := sessionTimer(ws.expiresAt())
	defer expiry.Stop()
	ready := ws.client.Ready()
	var retry <-chan time.Time
	var items []hub.Item
	var buf []byte
	for {
		select {
		case <-ws.client.Done():
			code, reason = closeForReason(ws.client.Reason())
			return code, reason, true
		case <-ws.readDone:
			switch {
			case errors.Is(ws.readErr, errControlAbuse):
				return ClosePolicy, "control channel abuse", true
			case errors.Is(ws.readErr, websocket.ErrMessageTooBig):
				// The library has sent the close frame; Close completes the
				// handshake.
				return CloseTooBig, "message too big", true
			}
			// The client closed or the connection broke.
			return websocket.CloseStatus(ws.readErr), "", false
		case <-ws.dead:
			return 0, "ping timeout", false
		case <-ws.rearm:
			expiry.Stop()
			if exp := ws.expiresAt(); !exp.IsZero() {
				expiry.Reset(time.Until(exp))
			}
		case <-expiry.C:
			if exp := ws.expiresAt(); !exp.IsZero() && time.Now().Before(exp) {
				expiry.Reset(time.Until(exp)) // refreshed meanwhile
				continue
			}
			return CloseCredentials, "credentials expired", true
		case <-retry:
			retry, ready = nil, ws.client.Ready()
		case <-ready:
			var err error
			items, err = ws.client.Pop(ctx, items[:0])
			buf, err = ws.writeItems(ctx, buf, items, err)
			clear(items)
			if errors.Is(err, hub.ErrSnapshotUnavailable) {
				// Pop has queued the snapshot again and re-armed Ready:
				// wait before reading it again, without blocking the rest.
				ws.s.log.Warn("snapshot read failed; retrying", "err", err)
				ready, retry = nil, time.After(snapshotRetry)
			} else if err != nil {
				return 0, "write failed", false
			}
			if cap(buf) > 4*cfg.MaxMessageBytes {
				buf = nil // a burst's buffer is not kept by an idle connection
			}
		}
	}
}

// writeItems writes the popped items as few messages as the size cap
// allows: frames joined by newlines in buf, which is returned for reuse.
// It returns popErr unless a write fails.
func (ws *wsConn) writeItems(ctx context.Context, buf []byte, items []hub.Item, popErr error) ([]byte, error) {
	limit := ws.s.cfg.MaxMessageBytes
	buf = buf[:0]
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
		if len(buf) > 0 && len(buf)+1+len(frame) > limit {
			if err := ws.write(ctx, buf); err != nil {
				return buf, err
			}
			buf = buf[:0]
		}
		if len(frame) >= limit {
			// Alone anyway: write the shared bytes without copying them.
			if err := ws.write(ctx, frame); err != nil {
				return buf, err
			}
			continue
		}
		if len(buf) > 0 {
			buf = append(buf, '\n')
		}
		buf = append(buf, frame...)
	}
	if len(buf) > 0 {
		if err := ws.write(ctx, buf); err != nil {
			return buf, err
		}
	}
	return buf, popErr
}

func (ws *wsConn) write(ctx context.Context, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, ws.s.cfg.WriteTimeout)
	defer cancel()
	return ws.conn.Write(ctx, websocket.MessageText, msg)
}

// keepalive pings every Config.Keepalive; a client that does not answer
// within Config.WriteTimeout is reported dead. The pong is read by the
// read loop.
func (ws *wsConn) keepalive(ctx context.Context) {
	tick := time.NewTicker(ws.s.cfg.Keepalive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, ws.s.cfg.WriteTimeout)
		err := ws.conn.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				select {
				case ws.dead <- struct{}{}:
				default:
				}
			}
			return
		}
	}
}

// readLoop handles control messages until the connection fails or the
// control channel is abused. Replies go through the client's queue, so
// the writer sends them in order with the events.
func (ws *wsConn) readLoop(ctx context.Context) {
	defer close(ws.readDone)
	for {
		// Not ctx: cancelling a read closes the connection, and the close
		// handshake needs it open. The read ends when the connection does.
		typ, msg, err := ws.conn.Read(context.Background())
		if err != nil {
			ws.readErr = err
			return
		}
		if !ws.limiter.Allow() {
			f, _ := decodeControl(msg)
			ws.reply(appendError(nil, f.ID, "", codeRateLimited, "too many control messages; slow down"))
			if ws.violation() {
				ws.readErr = errControlAbuse
				return
			}
			continue
		}
		if typ != websocket.MessageText {
			ws.reply(appendError(nil, nil, "", codeBadRequest, "messages must be text"))
			continue
		}
		ws.handle(ctx, msg)
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
func (ws *wsConn) handle(ctx context.Context, msg []byte) {
	f, cerr := decodeControl(msg)
	if cerr != nil {
		ws.reply(appendError(nil, f.ID, f.Topology, cerr.Code, cerr.Message))
		return
	}
	switch f.Op {
	case opPing:
		ws.reply(appendReply(nil, "pong", f.ID, ""))
	case opSubscribe:
		ws.subscribe(ctx, f)
	case opUnsubscribe:
		ws.client.Unsubscribe(f.Topology, appendReply(nil, "unsubscribed", f.ID, f.Topology))
	case opRefresh:
		ws.refresh(ctx, f)
	}
}

// callContext bounds a Redis call made by the read loop to half the pong
// wait: pongs are only read while the loop reads, so a stalled Redis must
// not make a healthy client look dead.
func (ws *wsConn) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, ws.s.cfg.WriteTimeout/2)
}

// subscribe checks existence before registering (the snapshot would tell
// too, but only asynchronously and without the request id), then queues
// the ack ahead of the topology's snapshot or replayed events.
func (ws *wsConn) subscribe(ctx context.Context, f controlFrame) {
	cctx, cancel := ws.callContext(ctx)
	exists, err := ws.s.hub.Snapshots().Exists(cctx, f.Topology)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			ws.s.log.Error("existence check failed", "topology", f.Topology, "err", err)
			ws.reply(appendError(nil, f.ID, f.Topology, codeUnavailable, "snapshot source unavailable; retry"))
		}
		return
	}
	if !exists {
		ws.reply(appendError(nil, f.ID, f.Topology, codeNotFound, "topology not found"))
		return
	}
	err = ws.client.Subscribe(f.Topology, f.Since, appendReply(nil, "subscribed", f.ID, f.Topology))
	switch {
	case err == nil, errors.Is(err, hub.ErrClientClosed):
	case errors.Is(err, hub.ErrTooManySubscriptions):
		ws.reply(appendError(nil, f.ID, f.Topology, codeTooManySubscriptions, "too many subscriptions on this connection"))
	default:
		ws.reply(appendError(nil, f.ID, f.Topology, codeInvalidTopology, "invalid topology id"))
	}
}

// refresh re-verifies fresh credentials and, when they are the same
// user's, moves the session's end to theirs. On refusal nothing changes.
func (ws *wsConn) refresh(ctx context.Context, f controlFrame) {
	var p Principal
	var err error
	cctx, cancel := ws.callContext(ctx)
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
			ws.reply(appendError(nil, f.ID, "", codeForbidden, ae.Message))
		case ctx.Err() == nil:
			ws.s.log.Error("credential check failed", "err", err)
			ws.reply(appendError(nil, f.ID, "", codeUnavailable, "credential store unavailable; retry"))
		}
		return
	}
	if p.User != ws.user {
		ws.reply(appendError(nil, f.ID, "", codeForbidden, "credentials belong to another user"))
		return
	}
	ws.client.SetTokenID(p.JTI)
	ws.setExpires(p.Expires)
	select {
	case ws.rearm <- struct{}{}:
	default:
	}
	ws.reply(appendRefreshed(nil, f.ID, p.Expires))
}
