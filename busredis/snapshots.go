package busredis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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
	prefix string
}

var _ hub.SnapshotSource = (*Snapshots)(nil)

// NewSnapshots reads snapshots through rdb. An empty prefix means
// DefaultKeyPrefix.
func NewSnapshots(rdb redis.Cmdable, prefix string) *Snapshots {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return &Snapshots{rdb: rdb, prefix: prefix}
}

// TopologyKey is the hash holding a topology's status.
func (s *Snapshots) TopologyKey(id string) string { return s.prefix + "topology:" + id }

// MutationsKey is the hash holding a topology's mutation rows.
func (s *Snapshots) MutationsKey(id string) string { return s.prefix + "topology:" + id + ":mutations" }

// Exists reports whether the topology's hash exists.
func (s *Snapshots) Exists(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.Exists(ctx, s.TopologyKey(id)).Result()
	if err != nil {
		return false, fmt.Errorf("exists %q: %w", id, err)
	}
	return n == 1, nil
}

// Snapshot reads status and in-flight mutations in one round trip.
func (s *Snapshots) Snapshot(ctx context.Context, id string) (hub.Snapshot, error) {
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
