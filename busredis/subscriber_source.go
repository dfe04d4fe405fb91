package busredis

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A subSource makes the subscription's connection on one shape of Redis.
type subSource interface {
	// psubscribe opens a new subscription; each call after the first is a
	// reconnect, made because the previous one failed.
	psubscribe(ctx context.Context, patterns []string) *redis.PubSub
	// node is the address subscribed on last, when known.
	node() string
	close()
}

func newSubSource(t *Target, log *slog.Logger) subSource {
	switch t.Shape {
	case ShapeSentinel:
		// The failover client dials through the sentinels: every new
		// connection asks them for the current primary, so a subscription
		// made after a failover is on the promoted server.
		return &clientSource{rdb: redis.NewFailoverClient(t.Sentinel), sentinel: true}
	case ShapeCluster:
		layout := *t.Cluster
		layout.ClientName = "topohub-layout"
		return &clusterSource{opts: t.Cluster, cluster: redis.NewClusterClient(&layout), log: log}
	default:
		return &clientSource{rdb: redis.NewClient(t.Single)}
	}
}

// clientSource subscribes through one client (a server, or the primary
// that Sentinel names).
type clientSource struct {
	rdb      *redis.Client
	sentinel bool // rdb is a failover client: its Addr names no server
}

func (c *clientSource) psubscribe(ctx context.Context, pats []string) *redis.PubSub {
	return c.rdb.PSubscribe(ctx, pats...)
}

func (c *clientSource) close() { _ = c.rdb.Close() }

func (c *clientSource) node() string {
	if c.sentinel {
		return "" // the sentinels pick the server; Subscriber.addr names them
	}
	return c.rdb.Options().Addr
}

// clusterSource holds the subscription on one primary of a cluster. A
// plain PUBLISH on any node is broadcast over the cluster bus to every
// node, so one PSUBSCRIBE per family on any one node receives every
// event. Each (re)connect reloads the cluster's layout and takes the
// first primary, in address order, that answers a PING: every hub of a
// deployment ends up on the same node, a hub whose subscription was torn
// down for a missed probe comes back to it, and a dead node (still
// listed until the cluster fails it over) is skipped. Primaries only, so
// that the node is one an operator (or a test) can find in the slots
// table.
type clusterSource struct {
	opts    *redis.ClusterOptions
	cluster *redis.ClusterClient // reads the layout only
	log     *slog.Logger

	mu    sync.Mutex
	cur   string // the address subscribed on last
	nodes map[string]*redis.Client
	made  int
}

func (c *clusterSource) psubscribe(ctx context.Context, pats []string) *redis.PubSub {
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := c.primaries(ctx)
	addr := ""
	for _, a := range addrs {
		if c.nodeClient(a).Ping(ctx).Err() == nil {
			addr = a
			break
		}
	}
	switch {
	case addr != "":
	case len(addrs) > 0:
		// None answers: try the one after the last, so that a retry
		// does not hang on the same node.
		i, _ := slices.BinarySearch(addrs, c.cur)
		if i < len(addrs) && addrs[i] == c.cur {
			i++
		}
		addr = addrs[i%len(addrs)]
	case c.cur != "":
		addr = c.cur // the layout could not be read: stay
	default:
		addr = c.opts.Addrs[0]
	}
	if c.made > 0 && addr != c.cur {
		c.log.Info("redis subscription moving to another cluster node", "from", c.cur, "to", addr)
	}
	c.made++
	c.cur = addr
	return c.nodeClient(addr).PSubscribe(ctx, pats...)
}

func (c *clusterSource) node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// primaries returns the primaries' addresses, sorted, from a fresh read
// of the layout when one answers.
func (c *clusterSource) primaries(ctx context.Context) []string {
	c.cluster.ReloadState(ctx)
	var mu sync.Mutex
	var addrs []string
	_ = c.cluster.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		addrs = append(addrs, n.Options().Addr)
		mu.Unlock()
		return nil
	})
	slices.Sort(addrs)
	return slices.Compact(addrs)
}

// nodeClient returns the client of one node, with the cluster's
// credentials, TLS and timeouts. c.mu must be held.
func (c *clusterSource) nodeClient(addr string) *redis.Client {
	if n, ok := c.nodes[addr]; ok {
		return n
	}
	if c.nodes == nil {
		c.nodes = map[string]*redis.Client{}
	}
	o := c.opts
	n := redis.NewClient(&redis.Options{
		Addr: addr, ClientName: o.ClientName, Protocol: o.Protocol,
		Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
		Dialer: o.Dialer, DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
	})
	c.nodes[addr] = n
	return n
}

func (c *clusterSource) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		_ = n.Close()
	}
	_ = c.cluster.Close()
}

// KeepClusterLayout reloads the slot layout of a cluster client every
// interval until ctx ends; for any other client it returns at once. A
// zero interval means 1s.
//
// go-redis reloads the layout on MOVED and ASK replies, but after a
// primary dies its pipelines (snapshots, the autopipeliners of the
// request path) keep dialling the dead address until the next periodic
// reload; a PUBLISH retried on another node succeeds there without a
// MOVED. Reloading every second bounds that to about a second after the
// cluster has promoted a replica.
func KeepClusterLayout(ctx context.Context, rdb redis.UniversalClient, interval time.Duration) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return
	}
	if interval <= 0 {
		interval = time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			cc.ReloadState(ctx)
		}
	}
}
