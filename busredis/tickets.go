package busredis

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
)

// DefaultTicketTTL is how long a ticket lives (docs/protocol.md §5).
const DefaultTicketTTL = 60 * time.Second

// ticketBytes is a ticket's entropy: 256 bits.
const ticketBytes = 32

// Tickets is the ticket store every hub instance sharing a Redis agrees on
// (docs/protocol.md §5): a ticket is the key <prefix>ticket:<ticket>, holding the
// principal it was minted for, with the ticket's lifetime as TTL.
// Redeeming is one GETDEL (Redis 6.2 or later), so exactly one caller,
// on whichever instance, gets the principal.
//
// A ticket is a credential: it must never be logged, and no error
// returned here contains it.
type Tickets struct {
	rdb    redis.Cmdable
	prefix string
	ttl    time.Duration
}

var _ hub.TicketStore = (*Tickets)(nil)

// NewTickets keeps tickets in rdb. An empty prefix means
// DefaultKeyPrefix; ttl <= 0 means DefaultTicketTTL.
func NewTickets(rdb redis.Cmdable, prefix string, ttl time.Duration) *Tickets {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	if ttl <= 0 {
		ttl = DefaultTicketTTL
	}
	return &Tickets{rdb: rdb, prefix: prefix, ttl: ttl}
}

// Key is the key that holds ticket until it is redeemed or expires.
func (t *Tickets) Key(ticket string) string { return t.prefix + "ticket:" + ticket }

// ticketValue is what a ticket's key holds.
type ticketValue struct {
	User string `json:"user"`
	Role string `json:"role"`
	Exp  int64  `json:"exp,omitempty"` // unix seconds; the session's end
	JTI  string `json:"jti,omitempty"`
}

// Mint stores a new ticket bound to p: 256 random bits, URL-safe base64
// without padding. The wait for Redis is bounded by ctx (see process).
func (t *Tickets) Mint(ctx context.Context, p hub.Principal) (string, time.Duration, error) {
	var b [ticketBytes]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand crashes the program instead
	ticket := base64.RawURLEncoding.EncodeToString(b[:])
	v := ticketValue{User: p.User, Role: p.Role, JTI: p.JTI}
	if !p.Expires.IsZero() {
		v.Exp = p.Expires.Unix()
	}
	val, err := json.Marshal(v)
	if err != nil {
		return "", 0, fmt.Errorf("encode ticket: %w", err)
	}
	set := redis.NewStatusCmd(ctx, "set", t.Key(ticket), val, "px", t.ttl.Milliseconds())
	if err := process(ctx, t.rdb, set); err != nil {
		return "", 0, fmt.Errorf("store ticket: %w", err)
	}
	return ticket, t.ttl, nil
}

// Redeem consumes ticket: the first caller gets its principal, every
// later one (on any instance) hub.ErrTicketInvalid, as does an unknown
// or expired ticket. Any other error is Redis failing, or ctx ending
// first (the wait is bounded by ctx; see process): the ticket may then
// have been consumed all the same, and the client mints another.
func (t *Tickets) Redeem(ctx context.Context, ticket string) (hub.Principal, error) {
	if !wellFormedTicket(ticket) {
		// Not one we could have minted: no need to ask Redis, and no
		// arbitrary caller-chosen key name reaches it.
		return hub.Principal{}, hub.ErrTicketInvalid
	}
	get := redis.NewStringCmd(ctx, "getdel", t.Key(ticket))
	err := process(ctx, t.rdb, get)
	if errors.Is(err, redis.Nil) {
		return hub.Principal{}, hub.ErrTicketInvalid
	}
	if err != nil {
		return hub.Principal{}, fmt.Errorf("redeem ticket: %w", err)
	}
	raw, _ := get.Bytes()
	var v ticketValue
	if err := json.Unmarshal(raw, &v); err != nil || v.User == "" {
		return hub.Principal{}, fmt.Errorf("%w: stored value is not a ticket", hub.ErrTicketInvalid)
	}
	p := hub.Principal{User: v.User, Role: v.Role, JTI: v.JTI}
	if v.Exp != 0 {
		p.Expires = time.Unix(v.Exp, 0)
	}
	return p, nil
}

// wellFormedTicket reports whether s has the shape of a minted ticket.
func wellFormedTicket(s string) bool {
	if len(s) != base64.RawURLEncoding.EncodedLen(ticketBytes) {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil
}
