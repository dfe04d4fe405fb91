package busredis

import (
	"context"
	"slices"
	"testing"
)

func TestRevocations(t *testing.T) {
	ctx := context.Background()
	rdb := pkgRedis.Client(t)
	if k := NewRevocations(rdb, "").Key(); k != "topohub:revoked" {
		t.Errorf("default key %q", k)
	}
	r := NewRevocations(rdb, testPrefix()+"revoked")
	if err := r.Revoke(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	if n := rdb.SCard(ctx, r.Key()).Val(); n != 2 {
		t.Fatalf("set holds %d ids, want 2", n)
	}
	for jti, want := range map[string]bool{"a": true, "b": true, "c": false, "": false} {
		if got, err := r.Revoked(ctx, jti); err != nil || got != want {
			t.Errorf("Revoked(%q) = %v, %v; want %v", jti, got, err, want)
		}
	}
	got, err := r.RevokedMany(ctx, []string{"c", "a", "", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true, false, true}; !slices.Equal(got, want) {
		t.Errorf("RevokedMany = %v, want %v", got, want)
	}
	if got, err := r.RevokedMany(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("RevokedMany(nil) = %v, %v", got, err)
	}
}

func TestRevocationsRedisDown(t *testing.T) {
	ctx := context.Background()
	r := NewRevocations(deadRedis(t), "")
	if _, err := r.Revoked(ctx, "a"); err == nil {
		t.Error("Revoked succeeded without Redis")
	}
	if _, err := r.RevokedMany(ctx, []string{"a"}); err == nil {
		t.Error("RevokedMany succeeded without Redis")
	}
}
