package busredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
)

// LimiterConfig configures a Limiter.
type LimiterConfig struct {
	// Max is how many streams one user may hold across every instance.
	// Zero value means 5.
	Max int
	// Prefix of the limiter's keys. Zero value means DefaultKeyPrefix.
	Prefix string
	// InstanceID names this process in Redis. It must be unique per
	// process: a restarted process that reused it would inherit its
	// predecessor's counts. Zero value means "<hostname>-<random hex>".
	InstanceID string
	// TTL is how long this instance's heartbeat deadline (and its
	// liveness key, and the TTL of the user hashes it refreshes) outlives
	// its last heartbeat, and so how soon the slots of a crashed instance
	// are freed. Zero value means 15s.
	TTL time.Duration
	// Heartbeat is the interval at which Run refreshes the liveness key.
	// It must be well under TTL. Zero value means TTL/3.
	Heartbeat time.Duration
	// Logger. Zero value means slog.Default().
	Logger *slog.Logger
}

// releaseTimeout bounds the Redis round trip of a release, which runs
// when a stream ends, often because its request context is done.
const releaseTimeout = 2 * time.Second

// Limiter caps the streams of each user across every hub instance that
// shares a Redis (docs/protocol.md §5). See docs/deployment.md for the design.
//
// Per user, two hashes with the user as their hash tag, so that they sit
// in one Cluster slot and each script touches that slot only:
// <prefix>conns:{<user>} maps instance id -> streams that instance holds,
// and <prefix>conns:{<user>}:alive maps instance id -> the deadline
// (Redis time, ms) by which the instance must have refreshed it. Run's
// heartbeat refreshes this instance's deadline in the hashes of every
// user it holds streams for, writing its counts from memory at the same
// time; a count whose deadline has passed belongs to a dead instance and
// is dropped by the next Acquire for that user, so a crash frees its
// slots within TTL. The key <prefix>instance:<id> (TTL) tells the
// heartbeat that Redis lost its data (it is gone), for the log.
type Limiter struct {
	rdb         redis.Cmdable
	cfg         LimiterConfig
	log         *slog.Logger
	instanceKey string

	// assert is held shared by each Acquire and release for its whole
	// round trip, and exclusively while the counts are re-asserted, so a
	// re-assert never overwrites a count change that is in flight.
	assert sync.RWMutex

	registered bool // the liveness key was written once; guarded by assert

	mu    sync.Mutex          // guards local and dirty
	local map[string]int      // this instance's open streams per user
	dirty map[string]struct{} // users whose count in Redis may be wrong
}

var _ hub.ConnLimiter = (*Limiter)(nil)

// NewLimiter counts streams in rdb. Run must be running while the limiter
// is used: without its heartbeat, other instances take this one for dead
// and drop its counts.
func NewLimiter(rdb redis.Cmdable, cfg LimiterConfig) *Limiter {
	if cfg.Max <= 0 {
		cfg.Max = 5
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultKeyPrefix
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = newInstanceID()
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 15 * time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = cfg.TTL / 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Limiter{
		rdb:         rdb,
		cfg:         cfg,
		log:         cfg.Logger,
		instanceKey: cfg.Prefix + "instance:" + cfg.InstanceID,
		local:       map[string]int{},
		dirty:       map[string]struct{}{},
	}
}

func newInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "topohub"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// InstanceID returns the name of this instance in Redis.
func (l *Limiter) InstanceID() string { return l.cfg.InstanceID }

// ConnsKey is the hash of user's streams per instance. The user is its
// hash tag: on a Cluster it shares its slot with AliveKey.
func (l *Limiter) ConnsKey(user string) string { return l.cfg.Prefix + "conns:{" + user + "}" }

// AliveKey is the hash of the deadlines of the instances that hold
// streams of user.
func (l *Limiter) AliveKey(user string) string { return l.ConnsKey(user) + ":alive" }

func (l *Limiter) userKeys(user string) []string {
	return []string{l.ConnsKey(user), l.AliveKey(user)}
}

// InstanceKey is this instance's liveness key.
func (l *Limiter) InstanceKey() string { return l.instanceKey }

// redisNowMs is the Lua prelude that reads Redis's clock, in ms: the
// deadlines are Redis's, so the instances' clocks need not agree.
const redisNowMs = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// acquireScript sums the user's live counts, dropping those of dead
// instances, and takes a slot unless the sum has reached the cap.
// KEYS the user's counts and deadlines; ARGV max, this instance's id,
// the TTL in ms. Returns the new sum, or minus the sum when refused.
var acquireScript = redis.NewScript(acquireSrc)

const acquireSrc = redisNowMs + `
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
	local id = fields[i]
	local deadline = tonumber(redis.call('HGET', KEYS[2], id) or '0')
	if id == ARGV[2] or deadline >= now then
		total = total + tonumber(fields[i + 1])
	else
		redis.call('HDEL', KEYS[1], id)
		redis.call('HDEL', KEYS[2], id)
	end
end
if total >= tonumber(ARGV[1]) then
	return -total
end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HSET', KEYS[2], ARGV[2], now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return total + 1
`

// releaseScript gives back one slot. KEYS the user's counts and
// deadlines; ARGV[1] this instance's id.
var releaseScript = redis.NewScript(releaseSrc)

const releaseSrc = `
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
	redis.call('HDEL', KEYS[1], ARGV[1])
	redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
`

// refreshScript writes this instance's count for the user and refreshes
// its deadline, and both keys' TTL, so that the keys of users whose
// every instance died expire by themselves. KEYS the user's counts and
// deadlines; ARGV this instance's id, its count, the TTL in ms.
var refreshScript = redis.NewScript(refreshSrc)

const refreshSrc = redisNowMs + `
if tonumber(ARGV[2]) > 0 then
	redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
	redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
	redis.call('PEXPIRE', KEYS[1], ARGV[3])
	redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
	redis.call('HDEL', KEYS[1], ARGV[1])
	redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
`

// Acquire takes a slot for user, failing with hub.ErrTooManyConnections
// when the user holds Max streams across the deployment. Any other error
// is Redis failing, or ctx ending first: the wait is bounded by ctx even
// on an autopipeliner (see process). The release it returns may be called
// more than once; only the first call counts.
func (l *Limiter) Acquire(ctx context.Context, user string) (func(), error) {
	l.assert.RLock()
	defer l.assert.RUnlock()
	n, err := evalScript(ctx, l.rdb, acquireScript, acquireSrc, l.userKeys(user), l.cfg.Max, l.cfg.InstanceID, l.cfg.TTL.Milliseconds()).Int64()
	if err != nil {
		// The script may have run and only its answer been lost: the next
		// heartbeat writes the count this instance really holds.
		l.markDirty(user)
		return nil, fmt.Errorf("acquire a connection slot: %w", err)
	}
	if n < 0 {
		return nil, fmt.Errorf("user holds %d streams across the deployment: %w", -n, hub.ErrTooManyConnections)
	}
	l.mu.Lock()
	l.local[user]++
	l.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { l.release(user) }) }, nil
}

func (l *Limiter) release(user string) {
	l.assert.RLock()
	defer l.assert.RUnlock()
	l.mu.Lock()
	if l.local[user]--; l.local[user] <= 0 {
		delete(l.local, user)
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := evalScript(ctx, l.rdb, releaseScript, releaseSrc, l.userKeys(user), l.cfg.InstanceID).Err(); err != nil {
		l.markDirty(user)
		l.log.Warn("connection slot release failed; the next heartbeat repairs the count", "err", err)
	}
}

func (l *Limiter) markDirty(user string) {
	l.mu.Lock()
	l.dirty[user] = struct{}{}
	l.mu.Unlock()
}

// Open returns how many streams this instance holds for user.
func (l *Limiter) Open(user string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.local[user]
}

// Run keeps this instance alive in Redis until ctx ends: at once, then
// every Heartbeat. It does not delete the instance key when it returns:
// the streams still open release their slots themselves, and if the
// process dies instead, the key expires within TTL.
func (l *Limiter) Run(ctx context.Context) {
	tick := time.NewTicker(l.cfg.Heartbeat)
	defer tick.Stop()
	failing := false
	for {
		err := l.beat(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			l.log.Warn("connection limiter heartbeat failed; retrying", "instance", l.cfg.InstanceID, "err", err)
		case err == nil && failing:
			failing = false
			l.log.Info("connection limiter heartbeat recovered", "instance", l.cfg.InstanceID)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// beat refreshes this instance's deadline, and writes its count, in the
// hashes of every user it holds streams for (and of every user whose
// count may be wrong), then the liveness key.
func (l *Limiter) beat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Heartbeat)
	defer cancel()
	// Through process: a heartbeat waiting on a dial that never completes
	// (a TLS handshake a plain Redis never answers) must end with ctx, or
	// shutdown waits for it.
	pexpire := redis.NewBoolCmd(ctx, "pexpire", l.instanceKey, l.cfg.TTL.Milliseconds())
	err := process(ctx, l.rdb, pexpire)
	var alive bool
	if err == nil {
		alive, err = pexpire.Result()
	}
	if err != nil {
		return fmt.Errorf("refresh %s: %w", l.instanceKey, err)
	}
	return l.reassert(ctx, alive)
}

// reassert writes this instance's counts and deadlines and then its
// liveness key. It holds assert exclusively, so no count change of this
// instance is in flight. Each user's write is one script on that user's
// slot; they are pipelined, not a transaction (a Cluster has none across
// slots): what fails stays dirty and is written at the next beat.
func (l *Limiter) reassert(ctx context.Context, alive bool) error {
	l.assert.Lock()
	defer l.assert.Unlock()
	l.mu.Lock()
	counts := make(map[string]int, len(l.local)+len(l.dirty))
	for u := range l.dirty {
		counts[u] = l.local[u]
	}
	for u, n := range l.local {
		counts[u] = n
	}
	dirty := l.dirty
	l.dirty = map[string]struct{}{}
	l.mu.Unlock()

	ttl := l.cfg.TTL.Milliseconds()
	var wg sync.WaitGroup
	var failMu sync.Mutex
	var failed []string
	var firstErr error
	// A bounded number in flight: the autopipeliner batches them, and a
	// hub with many users does not start a goroutine per user.
	sem := make(chan struct{}, 64)
	for u, n := range counts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := evalScript(ctx, l.rdb, refreshScript, refreshSrc, l.userKeys(u), l.cfg.InstanceID, n, ttl).Err(); err != nil {
				failMu.Lock()
				failed = append(failed, u)
				if firstErr == nil {
					firstErr = err
				}
				failMu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		l.mu.Lock()
		for _, u := range failed {
			l.dirty[u] = struct{}{}
		}
		for u := range dirty {
			if _, ok := counts[u]; !ok {
				l.dirty[u] = struct{}{}
			}
		}
		l.mu.Unlock()
		return fmt.Errorf("re-assert connection counts: %w", firstErr)
	}
	if alive {
		return nil
	}
	if err := l.rdb.Set(ctx, l.instanceKey, 1, l.cfg.TTL).Err(); err != nil {
		return fmt.Errorf("write %s: %w", l.instanceKey, err)
	}
	switch {
	case !l.registered:
		l.registered = true
		l.log.Info("connection limiter registered", "instance", l.cfg.InstanceID)
	default:
		l.log.Warn("connection limiter liveness key was gone (Redis restarted or unreachable for longer than TTL); counts written again",
			"instance", l.cfg.InstanceID, "users", len(counts))
	}
	return nil
}
