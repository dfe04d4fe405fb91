package busredis

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
	"topohub/internal/redistest"
)

// runLimiter starts l's heartbeat; the returned stop ends it abruptly, as
// a crash would (no slot is released). It is also called when the test
// ends.
func runLimiter(t *testing.T, l *Limiter) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	stop = func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	waitFor(t, 10*time.Second, "limiter registered", func() bool {
		return l.rdb.Exists(context.Background(), l.InstanceKey()).Val() == 1
	})
	return stop
}

func newTestLimiter(t *testing.T, rdb redis.UniversalClient, prefix string, ttl time.Duration) *Limiter {
	return NewLimiter(rdb, LimiterConfig{Prefix: prefix, TTL: ttl, Heartbeat: ttl / 10, Logger: quietLog})
}

func acquireN(t *testing.T, l *Limiter, user string, n int) []func() {
	t.Helper()
	var rel []func()
	for i := range n {
		r, err := l.Acquire(context.Background(), user)
		if err != nil {
			t.Fatalf("acquire %d of %d: %v", i+1, n, err)
		}
		rel = append(rel, r)
	}
	return rel
}

func mustRefuse(t *testing.T, l *Limiter, user string) {
	t.Helper()
	rel, err := l.Acquire(context.Background(), user)
	if err == nil {
		rel()
		t.Fatal("acquire over the cap succeeded")
	}
	if !errors.Is(err, hub.ErrTooManyConnections) {
		t.Fatalf("acquire over the cap: %v, want ErrTooManyConnections", err)
	}
}

func TestLimiterCapAcrossInstances(t *testing.T) {
	prefix := testPrefix()
	a := newTestLimiter(t, pkgRedis.Client(t), prefix, 15*time.Second)
	b := newTestLimiter(t, pkgRedis.Client(t), prefix, 15*time.Second)
	if a.InstanceID() == b.InstanceID() {
		t.Fatal("two limiters share an instance id")
	}
	runLimiter(t, a)
	runLimiter(t, b)

	acquireN(t, a, "u1", 3)
	relB := acquireN(t, b, "u1", 2)
	mustRefuse(t, a, "u1")
	mustRefuse(t, b, "u1")
	acquireN(t, a, "u2", 5) // another user is not affected

	// A release counts once, however often it is called.
	relB[0]()
	relB[0]()
	rdb := pkgRedis.Client(t)
	if got := rdb.HGetAll(context.Background(), a.ConnsKey("u1")).Val(); got[a.InstanceID()] != "3" || got[b.InstanceID()] != "1" || len(got) != 2 {
		t.Fatalf("counts after one release: %v", got)
	}
	acquireN(t, a, "u1", 1)
	mustRefuse(t, b, "u1")
	if a.Open("u1") != 4 || b.Open("u1") != 1 {
		t.Fatalf("local counts %d and %d, want 4 and 1", a.Open("u1"), b.Open("u1"))
	}
}

func TestLimiterReleaseEmptiesTheHash(t *testing.T) {
	a := newTestLimiter(t, pkgRedis.Client(t), testPrefix(), 15*time.Second)
	runLimiter(t, a)
	for _, r := range acquireN(t, a, "u1", 2) {
		r()
	}
	if n := pkgRedis.Client(t).Exists(context.Background(), a.ConnsKey("u1")).Val(); n != 0 {
		t.Fatal("the user's hash outlived its last slot")
	}
	if a.Open("u1") != 0 {
		t.Fatalf("local count %d", a.Open("u1"))
	}
}

func TestLimiterDeadInstanceFreedWithinTTL(t *testing.T) {
	const ttl = time.Second
	prefix := testPrefix()
	a := newTestLimiter(t, pkgRedis.Client(t), prefix, ttl)
	b := newTestLimiter(t, pkgRedis.Client(t), prefix, ttl)
	runLimiter(t, a)
	crashB := runLimiter(t, b)

	acquireN(t, a, "u1", 1)
	acquireN(t, b, "u1", 4) // never released: b crashes
	crashB()
	crashed := time.Now()
	mustRefuse(t, a, "u1") // b's slots still count until its key expires

	var rel func()
	waitFor(t, ttl+5*time.Second, "dead instance's slots freed", func() bool {
		r, err := a.Acquire(context.Background(), "u1")
		if err != nil {
			return false
		}
		rel = r
		return true
	})
	t.Logf("slots of the dead instance freed %s after its last heartbeat", time.Since(crashed).Round(time.Millisecond))
	acquireN(t, a, "u1", 3)
	mustRefuse(t, a, "u1")
	rel()
	if got := pkgRedis.Client(t).HGetAll(context.Background(), a.ConnsKey("u1")).Val(); len(got) != 1 || got[a.InstanceID()] != "4" {
		t.Fatalf("counts %v: the dead instance's field should be gone", got)
	}
}

func TestLimiterReassertsAfterRedisRestart(t *testing.T) {
	rs := redistest.Start(t)
	const ttl = time.Second
	prefix := testPrefix()
	a := newTestLimiter(t, rs.Client(t), prefix, ttl)
	runLimiter(t, a)
	acquireN(t, a, "u1", 3)
	acquireN(t, a, "u2", 1)

	rs.Restart(t) // empty: every count and the liveness key are gone
	rdb := rs.Client(t)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "counts written again", func() bool {
		return rdb.Exists(ctx, a.InstanceKey()).Val() == 1 &&
			rdb.HGet(ctx, a.ConnsKey("u1"), a.InstanceID()).Val() == "3" &&
			rdb.HGet(ctx, a.ConnsKey("u2"), a.InstanceID()).Val() == "1"
	})
	b := newTestLimiter(t, rs.Client(t), prefix, ttl)
	runLimiter(t, b)
	acquireN(t, b, "u1", 2)
	mustRefuse(t, b, "u1")
}

func TestLimiterRepairsFailedRelease(t *testing.T) {
	rs := redistest.StartDurable(t)
	// A long TTL keeps the liveness key through the restart, so it is the
	// failed release alone that makes the heartbeat write the count again.
	a := NewLimiter(rs.Client(t), LimiterConfig{Prefix: testPrefix(), TTL: time.Minute, Heartbeat: 50 * time.Millisecond, Logger: quietLog})
	runLimiter(t, a)
	rel := acquireN(t, a, "u1", 2)

	rs.Kill(t)
	rel[0]() // fails: Redis is down; the count in Redis stays 2
	rs.Restart(t)
	rdb := rs.Client(t)
	if rdb.Exists(context.Background(), a.InstanceKey()).Val() != 1 {
		t.Fatal("the liveness key did not survive the restart")
	}
	waitFor(t, 10*time.Second, "count repaired", func() bool {
		return rdb.HGet(context.Background(), a.ConnsKey("u1"), a.InstanceID()).Val() == "1"
	})
	rel[1]()
	waitFor(t, 10*time.Second, "hash emptied", func() bool {
		return rdb.Exists(context.Background(), a.ConnsKey("u1")).Val() == 0
	})
}

func TestLimiterRedisDown(t *testing.T) {
	l := NewLimiter(deadRedis(t), LimiterConfig{Logger: quietLog})
	_, err := l.Acquire(context.Background(), "u1")
	if err == nil || errors.Is(err, hub.ErrTooManyConnections) {
		t.Fatalf("acquire without Redis: %v, want an error other than ErrTooManyConnections", err)
	}
	if l.Open("u1") != 0 {
		t.Fatal("a failed acquire was counted")
	}
}
