// Package busredis is everything of topohub that talks to Redis: the one
// pattern subscription per topic family that feeds the hub, the snapshot
// source, tickets, the deployment-wide connection counters and the
// revocation list.
//
// It depends on hub and go-redis; it must not import gin or handlers.
package busredis
