package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/internal/sim"
)

// demoTopologies are the topologies --demo simulates; the printed console
// URL opens on all of them.
var demoTopologies = []string{"demo", "demo-east", "demo-west"}

// checkDemo refuses --demo with a real Redis: the simulator resets the
// keys of the topologies it owns.
func checkDemo(cfg *config) error {
	if cfg.Demo && cfg.RedisURL != "" {
		return errors.New("TOPOHUB_DEMO runs simulated producers against the embedded broker only; unset TOPOHUB_REDIS_URL (to load a real Redis, use topohub-sim)")
	}
	return nil
}

// startDemo creates the demo topologies and runs the simulator on them
// in bg until ctx ends: a gentle stream of mutation lifecycles, status
// changes and decky events, so the console is alive at once.
func startDemo(ctx context.Context, bg *sync.WaitGroup, cfg *config, redisURL string, log *slog.Logger) error {
	if !cfg.Demo {
		return nil
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opts)
	s, err := sim.New(rdb, sim.Config{
		Topologies:  demoTopologies,
		Rate:        1.5,
		TrafficRate: 5,
		FailShare:   0.15,
		MaxInFlight: 4,
		KeyPrefix:   cfg.KeyPrefix,
		Seed:        uint64(time.Now().UnixNano()),
	})
	if err == nil {
		err = s.Setup(ctx)
	}
	if err != nil {
		rdb.Close()
		return fmt.Errorf("demo: %w", err)
	}
	bg.Go(func() {
		defer rdb.Close()
		st, err := s.Run(ctx)
		if err != nil {
			log.Warn("demo traffic stopped", "err", err)
			return
		}
		log.Info("demo traffic stopped", "messages", st.Messages)
	})
	return nil
}

// consoleURL is the console's address with the token in the fragment; in
// demo mode it opens on the demo topologies. The console reads both the
// topologies (?topology=a&topology=b) and a non-default base path from
// its query.
func consoleURL(cfg *config, base, token string) string {
	v := url.Values{}
	if bp := trimSlash(cfg.BasePath); bp != "/api/v1" {
		v.Set("base", bp) // web/app.js assumes /api/v1 otherwise
	}
	if cfg.Demo {
		for _, id := range demoTopologies {
			v.Add("topology", id)
		}
	}
	q := ""
	if len(v) > 0 {
		q = "?" + v.Encode()
	}
	return base + "/" + q + "#token=" + token
}

// demoNote is what the dev hub prints about the simulator, if it runs.
func demoNote(cfg *config, base, token string) string {
	if !cfg.Demo {
		return ""
	}
	return fmt.Sprintf(`demo:    simulated producers publish to %s (a few events a second)
soak:    go run ./cmd/topohub-sim --check --hub %s --token %s
`, strings.Join(demoTopologies, ", "), base, token)
}
