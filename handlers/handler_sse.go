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

// snapshotRetry is how long a writer waits before reading a snapshot
// again after the source failed.
const snapshotRetry = time.Second

// admit runs the checks every stream passes before it starts, in the
// contract's order: authentication, then existence of the topology (so an
// unauthenticated caller cannot probe ids), then the per-user cap. On
// refusal it has answered and returns ok=false.
func (s *Server) admit(c *gin.Context, topology string) (p Principal, release func(), ok bool) {
	if s.draining.Load() {
		abortJSON(c, http.StatusServiceUnavailable, "hub shutting down")
		return p, nil, false
	}
	p, err := s.auth.Authenticate(c)
	if err != nil {
		abortAuth(c, err)
		return p, nil, false
	}
	if topology != "" {
		if err := hub.ValidateTopologyID(topology); err != nil {
			abortJSON(c, http.StatusBadRequest, err.Error())
			return p, nil, false
		}
		exists, err := s.hub.Snapshots().Exists(c.Request.Context(), topology)
		if err != nil {
			s.log.Error("existence check failed", "topology", topology, "err", err)
			abortJSON(c, http.StatusServiceUnavailable, "snapshot source unavailable")
			return p, nil, false
		}
		if !exists {
			abortJSON(c, http.StatusNotFound, "topology not found")
			return p, nil, false
		}
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
	p, release, ok := s.admit(c, id)
	if !ok {
		return
	}
	defer release()

	client := s.hub.NewClient(p.User)
	defer client.Close()
	client.SetTokenID(p.JTI)
	if s.draining.Load() {
		// Drain ran between admit and NewClient and did not see us.
		return
	}
	since := c.GetHeader("Last-Event-ID")
	if since == "" {
		since = c.Query("lastEventId")
	}
	if err := client.Subscribe(id, since, nil); err != nil {
		abortJSON(c, http.StatusBadRequest, err.Error())
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
	ready := client.Ready()
	var retry <-chan time.Time
	var items []hub.Item
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
		case <-retry:
			retry, ready = nil, client.Ready()
		case <-ready:
			var err error
			items, err = client.Pop(ctx, items[:0])
			frames := make([][]byte, 0, len(items))
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
			if !write(frames...) || gone {
				return
			}
			if err != nil {
				// Pop has queued the snapshot again: wait before reading
				// it again, still answering keepalives and the end.
				s.log.Warn("snapshot read failed; retrying", "topology", id, "err", err)
				ready, retry = nil, time.After(snapshotRetry)
			}
		}
	}
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
