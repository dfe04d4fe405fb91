package busredis

import (
	"context"
	"errors"
	"testing"

	"topohub/hub"
)

// An id may hold ':', but none may reach another topology's keys: the
// hash of "kc:mutations" would be the mutations hash of "kc".
func TestSnapshotKeysCannotCollide(t *testing.T) {
	ctx := context.Background()
	rdb := pkgRedis.Client(t)
	s := NewSnapshots(rdb, testPrefix())
	if err := rdb.HSet(ctx, s.MutationsKey("kc"), "m1", `{"id":"m1","state":"pending"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, s.TopologyKey("a:b"), "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"kc", "kc:mutations", "a:b:mutations"} {
		if ok, err := s.Exists(ctx, id); err != nil || ok {
			t.Errorf("Exists(%q) = %v, %v; want false", id, ok, err)
		}
		if _, err := s.Snapshot(ctx, id); !errors.Is(err, hub.ErrNotFound) {
			t.Errorf("Snapshot(%q) = %v; want ErrNotFound", id, err)
		}
	}
	// A plain id with a ':' keeps the contract's layout.
	if ok, err := s.Exists(ctx, "a:b"); err != nil || !ok {
		t.Errorf(`Exists("a:b") = %v, %v; want true`, ok, err)
	}
	snap, err := s.Snapshot(ctx, "a:b")
	if err != nil || snap.Status != "active" {
		t.Errorf(`Snapshot("a:b") = %+v, %v`, snap, err)
	}
}
