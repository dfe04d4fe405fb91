package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrTooManyConnections is returned by a ConnLimiter when the user already
// holds the maximum number of streams.
var ErrTooManyConnections = errors.New("too many connections for this user")

// A ConnLimiter caps the streams (WebSocket and SSE together) a user may
// hold open. Acquire runs before a stream starts; release runs once when
// it ends. Implementations: LocalLimiter (one process), busredis.Limiter
// (every instance sharing a Redis).
type ConnLimiter interface {
	Acquire(ctx context.Context, user string) (release func(), err error)
}

// LocalLimiter counts streams in this process only.
type LocalLimiter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

var _ ConnLimiter = (*LocalLimiter)(nil)

// NewLocalLimiter caps each user at max streams. max <= 0 means 5.
func NewLocalLimiter(max int) *LocalLimiter {
	if max <= 0 {
		max = 5
	}
	return &LocalLimiter{max: max, n: map[string]int{}}
}

// Acquire takes a slot for user or fails with ErrTooManyConnections.
func (l *LocalLimiter) Acquire(_ context.Context, user string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[user] >= l.max {
		return nil, fmt.Errorf("user holds %d streams: %w", l.n[user], ErrTooManyConnections)
	}
	l.n[user]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.n[user]--; l.n[user] <= 0 {
				delete(l.n, user)
			}
		})
	}, nil
}
