package busredis

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
)

// DefaultRevokedKey is the set of revoked token ids.
const DefaultRevokedKey = DefaultKeyPrefix + "revoked"

// Revocations reads the revoked token ids (jti) from one Redis set, which
// the token issuer fills (SADD) when it revokes a session. The set is
// never trimmed here: the issuer may SREM an id once its token's exp has
// passed, since an expired token is refused anyway.
type Revocations struct {
	rdb redis.Cmdable
	key string
}

var _ hub.RevocationList = (*Revocations)(nil)

// NewRevocations reads the set key in rdb. An empty key means
// DefaultRevokedKey.
func NewRevocations(rdb redis.Cmdable, key string) *Revocations {
	if key == "" {
		key = DefaultRevokedKey
	}
	return &Revocations{rdb: rdb, key: key}
}

// Key is the set's name.
func (r *Revocations) Key() string { return r.key }

// Revoked reports whether jti is in the set. An empty jti (a token
// without one) is never revoked. The wait for Redis is bounded by ctx
// (see process).
func (r *Revocations) Revoked(ctx context.Context, jti string) (bool, error) {
	if jti == "" {
		return false, nil
	}
	cmd := redis.NewBoolCmd(ctx, "sismember", r.key, jti)
	if err := process(ctx, r.rdb, cmd); err != nil {
		return false, fmt.Errorf("check revocation: %w", err)
	}
	return cmd.Val(), nil
}

// RevokedMany answers Revoked for every id of jtis in one round trip
// (SMISMEMBER, Redis 6.2 or later); the answer is in the order of jtis.
func (r *Revocations) RevokedMany(ctx context.Context, jtis []string) ([]bool, error) {
	if len(jtis) == 0 {
		return nil, nil
	}
	ids := make([]any, len(jtis))
	for i, j := range jtis {
		ids[i] = j
	}
	out, err := r.rdb.SMIsMember(ctx, r.key, ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("check %d revocations: %w", len(jtis), err)
	}
	for i, j := range jtis {
		if j == "" {
			out[i] = false
		}
	}
	return out, nil
}

// Revoke adds token ids to the set, as the token issuer does; for
// operators' tools and tests.
func (r *Revocations) Revoke(ctx context.Context, jtis ...string) error {
	if len(jtis) == 0 {
		return nil
	}
	ids := make([]any, len(jtis))
	for i, j := range jtis {
		ids[i] = j
	}
	if err := r.rdb.SAdd(ctx, r.key, ids...).Err(); err != nil {
		return fmt.Errorf("revoke %d token ids: %w", len(jtis), err)
	}
	return nil
}
