package handlers

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"golang.org/x/time/rate"
)

// maxMintingUsers bounds the per-user minting buckets kept in memory.
const maxMintingUsers = 10_000

// ticketResponse is the answer of POST <base>/auth/sse-ticket.
type ticketResponse struct {
	Ticket    string `json:"ticket"`
	ExpiresIn int    `json:"expires_in"` // seconds
}

// handleTicket serves POST <base>/auth/sse-ticket (PROTOCOL §5): a JWT in
// an Authorization Bearer header, and nothing else (a ticket must not buy
// another, nor a token in a URL), buys a single-use ticket to put in the
// URL of an EventSource or WebSocket, which cannot send headers.
func (s *Server) handleTicket(c *gin.Context) {
	if s.cfg.Tickets == nil {
		abortJSON(c, http.StatusNotImplemented, "tickets are not enabled")
		return
	}
	h := c.GetHeader("Authorization")
	if h == "" {
		abortAuth(c, unauthorized("a ticket is minted with Authorization: Bearer <token> only"))
		return
	}
	tok, err := bearerToken(h)
	if err != nil {
		abortAuth(c, err)
		return
	}
	// The revocation check and the mint share one deadline.
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.RequestTimeout)
	defer cancel()
	p, err := s.auth.verifyUnrevoked(ctx, tok)
	if err != nil {
		if !isAuthError(err) {
			s.log.Error("credential check failed", "err", err)
		}
		abortAuth(c, err)
		return
	}
	if !s.minting.allow(p.User, time.Now()) {
		abortTooMany(c, time.Duration(float64(time.Second)/float64(s.cfg.TicketRate)), "too many tickets minted; slow down")
		return
	}
	ticket, ttl, err := s.cfg.Tickets.Mint(ctx, p)
	if err != nil {
		s.log.Error("ticket mint failed", "err", err)
		abortUnavailable(c, "ticket store unavailable")
		return
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, ticketResponse{Ticket: ticket, ExpiresIn: int(ttl / time.Second)})
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
