// Package hub is the transport-neutral core of topohub: topic token rules
// and event names, decoding a Redis (channel, body) pair into an event that
// is encoded once, routing events to the clients subscribed to their
// topology, bounded per-client queues with resync on overflow, and cursors
// with a bounded per-topology history for resume.
//
// It must import neither gin nor Redis: busredis feeds it bus messages and
// snapshot data, handlers drain its clients onto SSE and WebSocket.
package hub
