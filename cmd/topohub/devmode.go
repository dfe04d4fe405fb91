package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"topohub/busredis"
	"topohub/internal/sim"
)

// devTokenTTL is how long the printed development token lives.
const devTokenTTL = 12 * time.Hour

// devBroker is the embedded Redis-compatible broker of development mode.
// It is never used when TOPOHUB_REDIS_URL is set, nor in tests that need
// Redis semantics (those run a real redis-server).
type devBroker struct {
	mr     *miniredis.Miniredis
	unnote func() // forgets the broker's URL noted for topohub-sim
}

func startDevBroker(cfg *config) (*devBroker, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start embedded broker: %w", err)
	}
	if len(cfg.JWTSecret) < 32 {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			mr.Close()
			return nil, err
		}
		cfg.JWTSecret = hex.EncodeToString(b)
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	snaps := busredis.NewSnapshots(rdb, cfg.KeyPrefix)
	if err := rdb.HSet(context.Background(), snaps.TopologyKey("demo"), "status", "active").Err(); err != nil {
		mr.Close()
		return nil, fmt.Errorf("create demo topology: %w", err)
	}
	d := &devBroker{mr: mr}
	d.unnote, _ = sim.WriteDevBroker(d.URL()) // topohub-sim's default --redis
	return d, nil
}

func (d *devBroker) URL() string { return "redis://" + d.mr.Addr() }

func (d *devBroker) Close() { d.unnote(); d.mr.Close() }

// Announce prints how to use the development hub.
func (d *devBroker) Announce(w io.Writer, cfg *config, base string) error {
	claims := jwt.MapClaims{
		"sub":  "dev-user",
		"uuid": "dev-user",
		"exp":  time.Now().Add(devTokenTTL).Unix(),
		"iat":  time.Now().Unix(),
	}
	if cfg.JWTIssuer != "" {
		claims["iss"] = cfg.JWTIssuer
	}
	if cfg.JWTAudience != "" {
		claims["aud"] = cfg.JWTAudience
	}
	if cfg.JWTType != "" {
		claims["typ"] = cfg.JWTType
	}
	role := "viewer"
	if len(cfg.StreamRoles) > 0 {
		role = cfg.StreamRoles[0]
	}
	claims[cfg.RoleClaim] = role
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(cfg.JWTSecret))
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, `
topohub development mode: TOPOHUB_REDIS_URL is not set, so an embedded
Redis-compatible broker runs at %[1]s (data lives in memory only).
A topology "demo" exists. Set TOPOHUB_REDIS_URL to use a real Redis.

hub:     %[2]s
console: %[8]s
publish: redis-cli -p %[3]s publish topology.demo.status '{"state":"degraded"}'
token:   %[4]s
         (role %[5]s, valid %[6]s)
stream:  curl -N -H "Authorization: Bearer %[4]s" %[2]s%[7]s/topologies/demo/events
%[9]s
`, d.mr.Addr(), base, d.mr.Port(), tok, role, devTokenTTL, trimSlash(cfg.BasePath), consoleURL(cfg, base, tok), demoNote(cfg, base, tok))
	return err
}

func trimSlash(p string) string {
	for len(p) > 0 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	if p != "" && p[0] != '/' {
		p = "/" + p
	}
	return p
}
