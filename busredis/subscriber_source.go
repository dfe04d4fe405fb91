package busredis

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
)

// A subSource makes the subscription's connection on one shape of Redis.
type subSource interface {
	// psubscribe opens a new subscription; each call after the first is a
	// reconnect, made because the previous one failed.
	psubscribe(ctx context.Context, patterns []string) *redis.PubSub
	close()
}

func newSubSource(t *Target, log *slog.Logger) subSource {
	switch t.Shape {
	case ShapeSentinel:
		// The failover client dials through the sentinels: every new
		// connection asks them for the current primary, so a subscription
		// made after a failover is on the promoted server.
		return &clientSource{rdb: redis.NewFailoverClient(t.Sentinel)}
	case ShapeCluster:
		return &clusterSource{opts: t.Cluster, cluster: redis.NewClusterClient(t.Cluster), log: log}
	default:
		return &clientSource{rdb: redis.NewClient(t.Single)}
	}
}

// clientSource subscribes through one client (a server, or the primary
// that Sentinel names).
type clientSource struct{ rdb *redis.Client }

func (c *clientSource) psubscribe(ctx context.Context, pats []string) *redis.PubSub {
	return c.rdb.PSubscribe(ctx, pats...)
}

func (c *clientSource) close() { _ = c.rdb.Close() }

// clusterSource holds the subscription on one primary of a cluster. A
// plain PUBLISH on any node is broadcast over the cluster bus to every
// node, so one PSUBSCRIBE per family on any one node receives every
// event. Each reconnect reloads the cluster's layout and moves on to the
// next primary in address order, so a dead node (still listed until the
// cluster fails it over) is tried at most every other attempt. Primaries
// only, so that the node is one an operator (or a test) can find in the
// slots table.
type clusterSource struct {
	opts    *redis.ClusterOptions
	cluster *redis.ClusterClient // reads the layout only
	log     *slog.Logger

	mu    sync.Mutex
	cur   string // the address subscribed last
	nodes map[string]*redis.Client
	made  int
}

func (c *clusterSource) psubscribe(ctx context.Context, pats []string) *redis.PubSub {
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := c.primaries(ctx)
	addr := c.cur
	switch {
	case len(addrs) == 0 && addr == "":
		addr = c.opts.Addrs[0]
	case len(addrs) == 0:
		// The layout could not be read: stay where we were.
	case addr == "":
		addr = addrs[0]
	default:
		i, _ := slices.BinarySearch(addrs, addr)
		if i < len(addrs) && addrs[i] == addr {
			i++
		}
		addr = addrs[i%len(addrs)]
	}
	if c.made > 0 && addr != c.cur {
		c.log.Info("redis subscription moving to another cluster node", "from", c.cur, "to", addr)
	}
	c.made++
	c.cur = addr
	return c.node(addr).PSubscribe(ctx, pats...)
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

// node returns the client of one node, with the cluster's credentials,
// TLS and timeouts.
func (c *clusterSource) node(addr string) *redis.Client {
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
