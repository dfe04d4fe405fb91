package hub

import (
	"context"
	"errors"
	"time"
)

// A Principal is an authenticated caller: whom a connection serves and
// until when.
type Principal struct {
	User    string
	Role    string
	Expires time.Time // end of the session: the token's exp
	JTI     string    // token id, for revocation; may be empty
}

// ErrTicketInvalid is returned by TicketStore.Redeem for a ticket that is
// unknown, expired or already used.
var ErrTicketInvalid = errors.New("ticket unknown, expired or already used")

// A TicketStore mints and redeems single-use tickets. Implementations:
// busredis.Tickets.
type TicketStore interface {
	// Mint stores a ticket bound to p and returns it with its lifetime.
	Mint(ctx context.Context, p Principal) (ticket string, ttl time.Duration, err error)
	// Redeem consumes a ticket exactly once, whichever instance asks;
	// ErrTicketInvalid when it is unknown, expired or already used.
	Redeem(ctx context.Context, ticket string) (Principal, error)
}

// A RevocationList says whether a token id has been revoked.
// Implementations: busredis.Revocations.
type RevocationList interface {
	Revoked(ctx context.Context, jti string) (bool, error)
}
