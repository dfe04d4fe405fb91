package handlers

import (
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"topohub/hub"
)

var (
	sseKeepalive = []byte(": keepalive\n\n")
	sseNotFound  = []byte("event: error\ndata: {\"code\":\"not_found\",\"message\":\"topology not found\"}\n\n")
)

// admit runs the checks every stream passes before it starts, in the
// contract's order: authentication, then (for SSE) the subscription, whose
// snapshot read tells whether the topology exists, so an unauthenticated
// caller cannot probe ids, then the per-user cap. On refusal it has
// answered and returns ok=false.
func (s *Server) admit(c *gin.Context, subscribe func(Principal) bool) (p Principal, release func(), ok bool) {
	if s.draining.Load() {
		abortJSON(c, http.StatusServiceUnavailable, "hub shutting down")
		return p, nil, false
	}
	p, err := s.auth.Authenticate(c)
	if err != nil {
		abortAuth(c, err)
		return p, nil, false
	}
	if subscribe != nil && !subscribe(p) {
		return p, nil, false
	}
	slot, err := s.cfg.Limiter.Acquire(c.Request.Context(), p.User)
	if err != nil {
		if errors.Is(err, hub.ErrTooManyConnections) {
			abortJSON(c, http.StatusTooManyRequests, "too many open streams for this user")
		} else {
			s.log.Error("connection limiter failed", "err", err)
			abortJSON(c, http.StatusServiceUnavailable, "connection limiter unavailable")
		}
		return p, nil, false
	}
	s.streams.add()
	return p, func() { slot(); s.streams.done() }, true
}

// handleSSE serves GET <base>/topologies/:id/events (PROTOCOL §7).
func (s *Server) handleSSE(c *gin.Context) {
	id := c.Param("id")
	if err := hub.ValidateTopologyID(id); err != nil {
		// Before authentication: says nothing about which ids exist.
		abortJSON(c, http.StatusBadRequest, err.Error())
		return
	}
	var client *hub.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	p, release, ok := s.admit(c, func(p Principal) bool {
		since := c.GetHeader("Last-Event-ID")
		if since == "" {
			since = c.Query("lastEventId")
		}
		client = s.hub.NewClient(p.User)
		err := client.Subscribe(c.Request.Context(), id, since, nil)
		switch {
		case err == nil:
			return true
		case errors.Is(err, hub.ErrNotFound):
			abortJSON(c, http.StatusNotFound, "topology not found")
		default:
			s.log.Error("snapshot read failed", "topology", id, "err", err)
			abortJSON(c, http.StatusServiceUnavailable, "snapshot source unavailable")
		}
		return false
	})
	if !ok {
		return
	}
	defer release()
	client.SetTokenID(p.JTI)
	if s.draining.Load() {
		// Drain ran between admit and NewClient and did not see us.
		return
	}

	w := c.Writer
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(frames ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		for _, f := range frames {
			if _, err := w.Write(f); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !write(sseKeepalive) {
		return
	}

	ctx := c.Request.Context()
	keepalive := time.NewTicker(s.cfg.Keepalive)
	defer keepalive.Stop()
	expiry := sessionTimer(p.Expires)
	defer expiry.Stop()
	var items []hub.Item
	var frames [][]byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-client.Done():
			return
		case <-expiry.C:
			return
		case <-keepalive.C:
			if !write(sseKeepalive) {
				return
			}
		case <-client.Ready():
			var err error
			items, err = client.Pop(ctx, items[:0])
			if err != nil {
				s.logSnapshotRetry(err)
			}
			frames = frames[:0]
			gone := false
			for _, it := range items {
				switch {
				case it.Event != nil:
					frames = append(frames, it.Event.SSEFrame())
				case it.Err != nil:
					frames = append(frames, sseNotFound)
					gone = true
				}
			}
			clear(items)
			ok := len(frames) == 0 || write(frames...)
			clear(frames)
			if !ok || gone {
				return
			}
		}
	}
}

// logSnapshotRetry logs a resync snapshot that could not be read (the hub
// retries it by itself), at most a few times per interval.
func (s *Server) logSnapshotRetry(err error) {
	s.logRetries.Do(func() { s.log.Warn("snapshot read failed; retrying", "err", err) })
}

// sessionTimer fires when the session ends; never when exp is zero.
func sessionTimer(exp time.Time) *time.Timer {
	if exp.IsZero() {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	return time.NewTimer(time.Until(exp))
}
