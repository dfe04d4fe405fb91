package busredis

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/internal/redistest"
	"topohub/internal/testwait"
)

// pkgRedis is the redis-server shared by this package's tests; each test
// uses its own key prefix.
var pkgRedis *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &pkgRedis)) }

// testPrefix is a key prefix no other test uses.
func testPrefix() string { return redistest.UniqueID("bt") + ":" }

// deadRedis is a client of an address nothing listens on: every command
// fails at once, as when Redis is down.
func deadRedis(t testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second, DialerRetries: 1})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, d, what, cond)
}

// quietLog keeps the components' logs out of test output.
var quietLog = slog.New(slog.DiscardHandler)
