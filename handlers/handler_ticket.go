package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// maxMintingUsers bounds the per-user minting buckets kept in memory.
const maxMintingUsers = 10_000

// ticketResponse is the answer of POST <base>/auth/sse-ticket.
type ticketResponse struct {
	Ticket    string `json:"ticket"`
	ExpiresIn int    `json:"expires_in"` // seconds
}

// handleTicket serves POST <base>/auth/sse-ticket (docs/protocol.md §5): a JWT in
// an Authorization Bearer header, and nothing else (a ticket must not buy
// another, nor a token in a URL), buys a single-use ticket to put in the
// URL of an EventSource or WebSocket, which cannot send headers.
func (s *Server) handleTicket(c *gin.Context) {
	if s.cfg.Tickets == nil {
		abortJSON(c, http.StatusNotImplemented, "tickets are not enabled")
		return
	}
	ctx, span := s.tracer.Start(c.Request.Context(), "api.auth.sse_ticket", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	c.Request = c.Request.WithContext(ctx)
	h := c.GetHeader("Authorization")
	if h == "" {
		err := unauthorized("a ticket is minted with Authorization: Bearer <token> only")
		s.refuseMint(c, "credentials", err.Message)
		abortAuth(c, err)
		return
	}
	tok, err := bearerToken(h)
	if err != nil {
		s.refuseMint(c, "credentials", err.Error())
		abortAuth(c, err)
		return
	}
	// The revocation check and the mint share one deadline.
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	p, err := s.auth.verifyUnrevoked(ctx, tok)
	if err != nil {
		if isAuthError(err) {
			s.refuseMint(c, "credentials", err.Error())
		} else {
			s.refuseMint(c, "unavailable", "credential store unavailable", "err", err)
		}
		endSpan(span, err)
		abortAuth(c, err)
		return
	}
	if !s.minting.allow(p.User, time.Now()) {
		s.refuseMint(c, "rate_limited", "too many tickets minted", "user", p.User)
		abortTooMany(c, time.Duration(float64(time.Second)/float64(s.cfg.TicketRate)), "too many tickets minted; slow down")
		return
	}
	ticket, ttl, err := s.cfg.Tickets.Mint(ctx, p)
	if err != nil {
		s.refuseMint(c, "unavailable", "ticket store unavailable", "err", err)
		endSpan(span, err)
		abortUnavailable(c, "ticket store unavailable")
		return
	}
	s.metrics.ticketsMinted.Inc()
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, ticketResponse{Ticket: ticket, ExpiresIn: int(ttl / time.Second)})
}

// refuseMint counts and logs a ticket mint refused for reason, never
// with the credential.
func (s *Server) refuseMint(c *gin.Context, reason, detail string, attrs ...any) {
	s.metrics.ticketsRefuse.WithLabelValues(reason).Inc()
	level := slog.LevelInfo
	if reason == "unavailable" {
		level = slog.LevelError
	}
	args := append([]any{"reason", reason, "detail", detail, "remote", s.clientIP(c)}, attrs...)
	s.log.Log(c.Request.Context(), level, "ticket refused", args...)
}

// userRates holds one token bucket per user, and at most max of them, so
// callers with many identities cannot grow it without bound.
type userRates struct {
	limit rate.Limit
	burst int
	max   int

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

func newUserRates(limit rate.Limit, burst, max int) *userRates {
	return &userRates{limit: limit, burst: burst, max: max, buckets: map[string]*rate.Limiter{}}
}

// allow takes a token from user's bucket at now.
func (r *userRates) allow(user string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[user]
	if b == nil {
		if len(r.buckets) >= r.max {
			r.evict(now)
		}
		b = rate.NewLimiter(r.limit, r.burst)
		r.buckets[user] = b
	}
	return b.AllowN(now, 1)
}

// evict forgets the buckets that have refilled: a new bucket starts
// full, so forgetting them changes nothing. When none has, it forgets the
// fullest, whose user gains the least from a fresh one. Lock should be
// held.
func (r *userRates) evict(now time.Time) {
	var fullest string
	most := -1.0
	evicted := false
	for u, b := range r.buckets {
		tokens := b.TokensAt(now)
		if tokens >= float64(r.burst) {
			delete(r.buckets, u)
			evicted = true
			continue
		}
		if tokens > most {
			fullest, most = u, tokens
		}
	}
	if !evicted {
		delete(r.buckets, fullest)
	}
}
