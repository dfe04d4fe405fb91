// Package handlers holds topohub's gin routes: the legacy SSE stream, the
// multiplexed WebSocket, tickets, health and metrics, and the
// authentication that guards them. It drains hub.Clients onto the wire;
// it must not talk to Redis itself (busredis implements the interfaces it
// needs).
package handlers
