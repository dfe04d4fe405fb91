package busredis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"topohub/hub"
)

// DefaultKeyPrefix prefixes every key topohub reads or writes.
const DefaultKeyPrefix = "topohub:"

// Snapshots is the default snapshot source (docs/protocol.md §4): the hash
// <prefix>topology:<id> (field status; its existence is the topology's)
// and the hash <prefix>topology:<id>:mutations (id -> JSON mutation row).
type Snapshots struct {
	rdb    redis.Cmdable
	exists redis.Cmdable // runs Exists, through process (bounded.go)
	prefix string
}

var _ hub.SnapshotSource = (*Snapshots)(nil)

// NewSnapshots reads snapshots through rdb. An empty prefix means
// DefaultKeyPrefix.
func NewSnapshots(rdb redis.Cmdable, prefix string) *Snapshots {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return &Snapshots{rdb: rdb, exists: rdb, prefix: prefix}
}

// WithExistenceClient runs Exists, which a request waits for (a WebSocket
// subscribe that resumes), on rdb, through process: give the asynchronous
// autopipeliner, whose waits end with the request's deadline. Snapshot
// reads stay on the client given to NewSnapshots; the hub bounds them
// itself. It returns s.
func (s *Snapshots) WithExistenceClient(rdb redis.Cmdable) *Snapshots {
	s.exists = rdb
	return s
}

// TopologyKey is the hash holding a topology's status.
func (s *Snapshots) TopologyKey(id string) string { return s.prefix + "topology:" + id }

// MutationsKey is the hash holding a topology's mutation rows.
func (s *Snapshots) MutationsKey(id string) string {
	return s.prefix + "topology:" + id + mutationsSuffix
}

// mutationsSuffix ends every mutations key after the topology's id.
const mutationsSuffix = ":mutations"

// collides reports whether id's hash would be another topology's
// mutations hash: the key of id "kc:mutations" is the mutations key of
// "kc". Such an id names no topology (the key layout of plain ids is the
// contract's and stays as it is), so it is not found without asking
// Redis.
func collides(id string) bool { return strings.HasSuffix(id, mutationsSuffix) }

// Exists reports whether the topology's hash exists.
func (s *Snapshots) Exists(ctx context.Context, id string) (bool, error) {
	if collides(id) {
		return false, nil
	}
	cmd := redis.NewIntCmd(ctx, "exists", s.TopologyKey(id))
	if err := process(ctx, s.exists, cmd); err != nil {
		return false, fmt.Errorf("exists %q: %w", id, err)
	}
	return cmd.Val() == 1, nil
}

// Snapshot reads status and in-flight mutations in one round trip.
func (s *Snapshots) Snapshot(ctx context.Context, id string) (hub.Snapshot, error) {
	if collides(id) {
		return hub.Snapshot{}, hub.ErrNotFound
	}
	var (
		exists *redis.IntCmd
		status *redis.StringCmd
		rows   *redis.StringSliceCmd
	)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, s.TopologyKey(id))
		status = p.HGet(ctx, s.TopologyKey(id), "status")
		rows = p.HVals(ctx, s.MutationsKey(id))
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return hub.Snapshot{}, fmt.Errorf("snapshot %q: %w", id, err)
	}
	if exists.Val() != 1 {
		return hub.Snapshot{}, hub.ErrNotFound
	}
	raw := make([]json.RawMessage, 0, len(rows.Val()))
	for _, r := range rows.Val() {
		raw = append(raw, json.RawMessage(r))
	}
	return hub.Snapshot{
		TopologyID: id,
		Status:     status.Val(),
		InFlight:   hub.OrderInFlight(raw),
	}, nil
}
