package handlers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"topohub/hub"
)

// revocationBatcher is a RevocationList that also answers for many token
// ids in one round trip, in their order; busredis.Revocations is one.
type revocationBatcher interface {
	RevokedMany(ctx context.Context, jtis []string) ([]bool, error)
}

// revocationBatch caps the ids asked in one round trip.
const revocationBatch = 1000

// WatchRevocations ends the connections whose token has been revoked
// since they were opened: every interval (zero value means 5s) it checks
// the token id of every open connection against Config.Revocations and
// disconnects the revoked ones with hub.DisconnectRevoked. It returns when
// ctx ends, and at once when Config.Revocations is nil.
func (s *Server) WatchRevocations(ctx context.Context, every time.Duration) {
	if s.cfg.Revocations == nil {
		return
	}
	if every <= 0 {
		every = 5 * time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := s.disconnectRevoked(ctx, every)
		if n > 0 {
			s.log.Info("connections of revoked tokens ended", "connections", n)
		}
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			s.log.Warn("revocation check failed; retrying", "err", err)
		case err == nil && failing:
			failing = false
			s.log.Info("revocation check recovered")
		}
	}
}

// disconnectRevoked checks every open connection once, within timeout,
// and returns how many it ended.
func (s *Server) disconnectRevoked(ctx context.Context, timeout time.Duration) (int, error) {
	byJTI := map[string][]*hub.Client{}
	s.hub.ForEachClient(func(c *hub.Client) {
		if j := c.TokenID(); j != "" {
			byJTI[j] = append(byJTI[j], c)
		}
	})
	if len(byJTI) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	revoked, err := s.revokedAmong(ctx, slices.Collect(maps.Keys(byJTI)))
	n := 0
	for _, j := range revoked {
		for _, c := range byJTI[j] {
			c.Disconnect(hub.DisconnectRevoked)
			n++
		}
	}
	return n, err
}

// revokedAmong returns the revoked ids of jtis: in batches when the list
// can, else one question per id. On error it returns those found so far.
func (s *Server) revokedAmong(ctx context.Context, jtis []string) ([]string, error) {
	var out []string
	if b, ok := s.cfg.Revocations.(revocationBatcher); ok {
		for chunk := range slices.Chunk(jtis, revocationBatch) {
			res, err := b.RevokedMany(ctx, chunk)
			if err != nil {
				return out, err
			}
			if len(res) != len(chunk) {
				return out, fmt.Errorf("revocation list answered %d of %d ids", len(res), len(chunk))
			}
			for i, r := range res {
				if r {
					out = append(out, chunk[i])
				}
			}
		}
		return out, nil
	}
	for _, j := range jtis {
		r, err := s.cfg.Revocations.Revoked(ctx, j)
		if err != nil {
			return out, err
		}
		if r {
			out = append(out, j)
		}
	}
	return out, nil
}
