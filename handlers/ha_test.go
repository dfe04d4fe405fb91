package handlers

// Sentinel, Cluster and TLS, each with real processes started by the
// test: two hubs per deployment, clients on both, and a primary killed
// under them.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/busredis"
	"topohub/hub"
	"topohub/internal/redistest"
)

// haProbe is the probe interval of the HA hubs: a dead primary is seen
// within 2 haProbe even when no error reaches the subscription.
const haProbe = 300 * time.Millisecond

// haFailover bounds a failover with the test timings (sentinel
// down-after 500 ms, cluster-node-timeout 1 s) on a loaded machine.
const haFailover = 20 * time.Second

// haHub is a hub on any shape of Redis, with tickets and the
// deployment-wide cap in that Redis.
type haHub struct {
	*testHub
	rdb     redis.UniversalClient
	limiter *busredis.Limiter
}

func newHAHub(t *testing.T, target *busredis.Target, prefix string, maxConns int) *haHub {
	t.Helper()
	rdb := target.NewClient()
	t.Cleanup(func() { rdb.Close() })
	log := quietLog
	if os.Getenv("HA_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	th := &testHub{t: t, prefix: prefix}
	th.snaps = busredis.NewSnapshots(rdb, prefix)
	h, err := hub.New(hub.Config{Snapshots: th.snaps, Logger: log, MaxLag: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	th.hub = h
	limiter := busredis.NewLimiter(rdb, busredis.LimiterConfig{Max: maxConns, Prefix: prefix, TTL: 3 * time.Second, Logger: quietLog})
	th.sub = busredis.NewTargetSubscriber(target, h, busredis.SubscriberConfig{
		Families: h.Families(), Publisher: rdb, LagInterval: haProbe, Instance: limiter.InstanceID(), Logger: log,
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { th.sub.Run(ctx) })
	wg.Go(func() { limiter.Run(ctx) })
	wg.Go(func() { busredis.KeepClusterLayout(ctx, rdb, 0) })
	srv, err := New(h, Config{
		Logger: log, Ready: th.sub.Ready, BusLag: th.sub.LastLag,
		Tickets: busredis.NewTickets(rdb, prefix, 0), Limiter: limiter,
		Auth: AuthConfig{Secret: testSecret, Issuer: "decnet", Audience: "decnet-dashboard", Type: "access"},
	})
	if err != nil {
		t.Fatal(err)
	}
	th.http = httptest.NewUnstartedServer(srv.Handler())
	th.serve(srv, cancel, &wg, 15*time.Second)
	return &haHub{testHub: th, rdb: rdb, limiter: limiter}
}

func userToken(t testing.TB, user string) string {
	return signToken(t, testSecret, claim("uuid", user), claim("sub", user))
}

// haClient is one SSE stream and what it has read.
type haClient struct {
	name   string
	stream *sseStream
}

// waitEvent reads frames until one satisfies want, failing on the
// deadline or when the stream ends (a connection closed by the hub).
func (c *haClient) waitEvent(t *testing.T, d time.Duration, what string, want func(sseFrame) bool) sseFrame {
	t.Helper()
	f, err := c.await(t, d, what, want)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// await is waitEvent for any goroutine: it returns the failure.
func (c *haClient) await(t *testing.T, d time.Duration, what string, want func(sseFrame) bool) (sseFrame, error) {
	timeout := time.After(d)
	for {
		select {
		case f, ok := <-c.stream.frames:
			if !ok {
				return sseFrame{}, fmt.Errorf("%s: the stream ended while waiting for %s", c.name, what)
			}
			if strings.HasPrefix(f, ":") {
				continue
			}
			if fr := parseFrame(t, f); want(fr) {
				return fr, nil
			}
		case <-timeout:
			return sseFrame{}, fmt.Errorf("%s: no %s within %s", c.name, what, d)
		}
	}
}

func isResync(f sseFrame) bool {
	return f.event == "snapshot" && strings.Contains(f.data, `"resync":true`)
}

// openClients opens n streams of topology id on each hub, each as its own
// user, and reads their first snapshot.
func openClients(t *testing.T, hubs []*haHub, id string, n int) []*haClient {
	t.Helper()
	var out []*haClient
	for hi, h := range hubs {
		for i := range n {
			name := fmt.Sprintf("hub%d-client%d", hi, i)
			s := h.openSSE(h.sseURL(id), bearer(userToken(t, "u-"+name)))
			c := &haClient{name: name, stream: s}
			c.waitEvent(t, 10*time.Second, "first snapshot", func(f sseFrame) bool { return f.event == "snapshot" })
			out = append(out, c)
		}
	}
	return out
}

// steadyPublisher publishes a status event to id every 50 ms through rdb
// until the test ends, retrying on errors, as a producer would through a
// failover.
func steadyPublisher(t *testing.T, rdb redis.UniversalClient, id string) *atomic.Int64 {
	var n atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			if rdb.Publish(ctx, "topology."+id+".status", fmt.Sprintf(`{"payload":{"n":%d}}`, n.Load()+1)).Err() == nil {
				n.Add(1)
			}
			cancel()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return &n
}

// expectRecovery checks that every client, on its open stream, gets a
// resync snapshot and then live events again.
func expectRecovery(t *testing.T, clients []*haClient, since time.Time) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			if _, err := c.await(t, haFailover, "resync snapshot after the failover", isResync); err != nil {
				t.Error(err)
				return
			}
			if _, err := c.await(t, haFailover, "live event after the resync", func(f sseFrame) bool { return f.event == "status" }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("every client resynced and live again %s after the kill", time.Since(since).Round(time.Millisecond))
	for _, c := range clients {
		select {
		case <-c.stream.done:
			t.Errorf("%s: the hub closed the stream", c.name)
		default:
		}
	}
}

func expectDown(t *testing.T, hubs []*haHub, downsBefore []uint64) {
	t.Helper()
	for i, h := range hubs {
		if n, _ := h.sub.Downs(); n <= downsBefore[i] {
			t.Errorf("hub %d: the bus was never marked down through the failover (/readyz would have lied)", i)
		}
		if code, _ := h.status(http.MethodGet, h.http.URL+"/readyz", nil); code != http.StatusOK {
			t.Errorf("hub %d: /readyz %d after recovery", i, code)
		}
	}
}

func downs(hubs []*haHub) []uint64 {
	var out []uint64
	for _, h := range hubs {
		n, _ := h.sub.Downs()
		out = append(out, n)
	}
	return out
}

func TestSentinelFailover(t *testing.T) {
	ss := redistest.StartSentinel(t)
	target, err := busredis.ParseURL(ss.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	prefix := redistest.UniqueID("ha") + ":"
	hubs := []*haHub{newHAHub(t, target, prefix, 5), newHAHub(t, target, prefix, 5)}
	ctx := context.Background()
	id := redistest.UniqueID("topo-")
	if err := hubs[0].rdb.HSet(ctx, hubs[0].snaps.TopologyKey(id), "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	clients := openClients(t, hubs, id, 2)
	published := steadyPublisher(t, hubs[0].rdb, id)
	for _, c := range clients {
		c.waitEvent(t, 10*time.Second, "live event", func(f sseFrame) bool { return f.event == "status" })
	}

	// A ticket minted before the failover, replicated before the kill.
	ticket := hubs[0].mintTicket(userToken(t, "ticket-user"))
	primary := ss.Primary.Client(t)
	replica := ss.Replica.Client(t)
	offset := func(c *redis.Client, field string) int64 {
		var n int64
		for _, line := range strings.Split(c.Info(ctx, "replication").Val(), "\r\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				fmt.Sscan(v, &n)
			}
		}
		return n
	}
	want := offset(primary, "master_repl_offset")
	waitFor(t, 10*time.Second, "the ticket replicated", func() bool { return offset(replica, "slave_repl_offset") >= want })

	before := downs(hubs)
	ss.Primary.Kill()
	killed := time.Now()
	waitFor(t, haFailover, "the sentinels to promote the replica", func() bool { return ss.MasterAddr(t) == ss.Replica.Addr })
	t.Logf("replica promoted %s after the kill", time.Since(killed).Round(time.Millisecond))
	expectRecovery(t, clients, killed)
	expectDown(t, hubs, before)
	if published.Load() == 0 {
		t.Fatal("nothing was published")
	}

	// The replicated ticket opens a stream on the other hub after the
	// failover.
	s := hubs[1].openSSE(hubs[1].sseURL(id)+"?ticket="+ticket, nil)
	(&haClient{name: "ticket stream", stream: s}).waitEvent(t, 10*time.Second, "snapshot", func(f sseFrame) bool { return f.event == "snapshot" })
}

func TestClusterFailover(t *testing.T) {
	cl := redistest.StartCluster(t)
	target, err := busredis.ParseURL(cl.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	prefix := redistest.UniqueID("ha") + ":"
	const maxConns = 3
	hubs := []*haHub{newHAHub(t, target, prefix, maxConns), newHAHub(t, target, prefix, maxConns)}
	ctx := context.Background()
	id := redistest.UniqueID("topo-")
	rdb := hubs[0].rdb
	row := `{"id":"m1","topology_id":"` + id + `","op":"add_decky","payload":{},"state":"pending","requested_at":"2026-11-28T10:00:00+00:00","applied_at":null,"reason":null}`
	if err := rdb.HSet(ctx, hubs[0].snaps.TopologyKey(id), "status", "degraded").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, hubs[0].snaps.MutationsKey(id), "m1", row).Err(); err != nil {
		t.Fatal(err)
	}

	// Snapshots: the topology's two keys live in different slots.
	for _, h := range hubs {
		s := h.openSSE(h.sseURL(id), bearer(userToken(t, "snap-user")))
		f := (&haClient{name: "snapshot stream", stream: s}).waitEvent(t, 10*time.Second, "snapshot", func(f sseFrame) bool { return f.event == "snapshot" })
		if !strings.Contains(f.data, `"status":"degraded"`) || !strings.Contains(f.data, `"mutation_id":"m1"`) && !strings.Contains(f.data, `"id":"m1"`) {
			t.Fatalf("snapshot %s", f.data)
		}
		s.Close()
	}

	clients := openClients(t, hubs, id, 2)

	// Events published through every node reach the clients of both hubs.
	for i, n := range cl.Nodes {
		if err := n.Client(t).Publish(ctx, "topology."+id+".status", fmt.Sprintf(`{"payload":{"node":%d}}`, i)).Err(); err != nil {
			t.Fatal(err)
		}
		for _, c := range clients {
			c.waitEvent(t, 10*time.Second, fmt.Sprintf("event published on node %d", i), func(f sseFrame) bool {
				return f.event == "status" && strings.Contains(f.data, fmt.Sprintf(`"node":%d`, i))
			})
		}
	}

	// Tickets: minted on one hub, redeemed on the other.
	ticket := hubs[0].mintTicket(userToken(t, "ticket-user"))
	ts := hubs[1].openSSE(hubs[1].sseURL(id)+"?ticket="+ticket, nil)
	(&haClient{name: "ticket stream", stream: ts}).waitEvent(t, 10*time.Second, "snapshot", func(f sseFrame) bool { return f.event == "snapshot" })
	ts.Close()

	// The cap across both hubs: 2 + 1 streams, then 429 on either.
	capTok := userToken(t, "cap-user")
	var held []*sseStream
	for _, h := range []*haHub{hubs[0], hubs[0], hubs[1]} {
		held = append(held, h.openSSE(h.sseURL(id), bearer(capTok)))
	}
	for i, h := range hubs {
		if code, body := h.status(http.MethodGet, h.sseURL(id), bearer(capTok)); code != http.StatusTooManyRequests {
			t.Fatalf("hub %d: stream over the cap: %d %s, want 429", i, code, body)
		}
	}
	held[2].Close()
	waitFor(t, 10*time.Second, "the released slot", func() bool { return hubs[1].limiter.Open("cap-user") == 0 })
	held = append(held, hubs[1].openSSE(hubs[1].sseURL(id), bearer(capTok)))

	// Kill the primary that the subscriptions are on: every hub takes
	// the first primary that answers, so both are on the same one.
	var victim *redistest.Proc
	waitFor(t, 10*time.Second, "both subscriptions on one node", func() bool {
		victim = cl.Node(hubs[0].sub.Node())
		return victim != nil && hubs[1].sub.Node() == victim.Addr && hubs[0].sub.Ready() && hubs[1].sub.Ready()
	})
	if !strings.Contains(victim.Client(t).ClientList(ctx).Val(), " name="+busredis.SubscriberName+" ") {
		t.Fatalf("CLIENT LIST of %s shows no subscription", victim.Addr)
	}
	if info := victim.Client(t).Info(ctx, "replication").Val(); !strings.Contains(info, "role:master") {
		t.Fatalf("the subscription is on a replica:\n%s", info)
	}
	var survivor *redistest.Proc
	for _, n := range cl.Nodes {
		if n != victim {
			survivor = n
			break
		}
	}
	// The victim's replica must hold what was written to it (the
	// topology, if its slot is there): on a loaded machine its first sync
	// may still be under way, and a replica promoted empty makes the
	// topology vanish (its resync is not_found and the streams end).
	vc := victim.Client(t)
	waitFor(t, 10*time.Second, "the victim's replica in sync", func() bool {
		return replicaCaughtUp(vc.Info(ctx, "replication").Val())
	})
	published := steadyPublisher(t, rdb, id)
	before := downs(hubs)
	victim.Kill()
	killed := time.Now()
	sc := survivor.Client(t)
	waitFor(t, haFailover, "a replica promoted (cluster ok again)", func() bool {
		return strings.Contains(sc.ClusterInfo(ctx).Val(), "cluster_state:ok") && !strings.Contains(clusterMasters(ctx, sc), victim.Addr)
	})
	t.Logf("replica promoted %s after the kill", time.Since(killed).Round(time.Millisecond))
	expectRecovery(t, clients, killed)
	expectDown(t, hubs, before)
	if published.Load() == 0 {
		t.Fatal("nothing was published")
	}
	for i, h := range hubs {
		if n := cl.Node(h.sub.Node()); n == nil || !n.Alive() {
			t.Errorf("hub %d: subscription on %q after the failover, not a live node", i, h.sub.Node())
		}
	}
}

// clusterMasters returns the lines of CLUSTER NODES of the serving
// primaries.
func clusterMasters(ctx context.Context, c *redis.Client) string {
	var out []string
	for _, line := range strings.Split(c.ClusterNodes(ctx).Val(), "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.Contains(f[2], "master") && !strings.Contains(f[2], "fail") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// writeCA writes a self-signed CA certificate to dir/name.pem and returns
// the path, the certificate and its key.
func writeCA(t *testing.T, dir, name string) (caFile string, ca *x509.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(der)
	caFile = filepath.Join(dir, name+".pem")
	writePEM(t, caFile, "CERTIFICATE", der)
	return caFile, ca, key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTLSWithCAFile(t *testing.T) {
	dir := t.TempDir()
	caFile, ca, caKey := writeCA(t, dir, "topohub-test-ca")
	wrongCA, _, _ := writeCA(t, dir, "some-other-ca")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	srv := redistest.StartTLS(t, certFile, keyFile)
	ctx := context.Background()

	// The wrong CA: the handshake is refused.
	bad, err := busredis.ParseURL("rediss://"+srv.Addr, wrongCA)
	if err != nil {
		t.Fatal(err)
	}
	bc := bad.NewClient()
	defer bc.Close()
	if err := bc.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("PING with the wrong CA: %v, want a certificate error", err)
	}

	// The right CA: a hub that subscribes, delivers and mints tickets.
	good, err := busredis.ParseURL("rediss://"+srv.Addr, caFile)
	if err != nil {
		t.Fatal(err)
	}
	h := newHAHub(t, good, redistest.UniqueID("tls")+":", 5)
	id := redistest.UniqueID("topo-")
	if err := h.rdb.HSet(ctx, h.snaps.TopologyKey(id), "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	ticket := h.mintTicket(userToken(t, "tls-user"))
	c := &haClient{name: "tls client", stream: h.openSSE(h.sseURL(id)+"?ticket="+ticket, nil)}
	c.waitEvent(t, 10*time.Second, "snapshot", func(f sseFrame) bool { return f.event == "snapshot" })
	if err := h.rdb.Publish(ctx, "topology."+id+".status", `{"payload":{"tls":true}}`).Err(); err != nil {
		t.Fatal(err)
	}
	c.waitEvent(t, 10*time.Second, "event over TLS", func(f sseFrame) bool { return f.event == "status" })

	// A subscriber with the wrong CA never becomes ready.
	hb, err := hub.New(hub.Config{Snapshots: busredis.NewSnapshots(bc, "x:"), Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	sub := busredis.NewTargetSubscriber(bad, hb, busredis.SubscriberConfig{Families: hb.Families(), Publisher: bc, LagInterval: haProbe, Logger: quietLog})
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { sub.Run(sctx) })
	// As long as the good hub's probes take: several attempts' worth.
	waitFor(t, 10*time.Second, "probes of the good hub", func() bool { return h.sub.Probes() >= 5 })
	cancel()
	wg.Wait()
	if sub.Established() != 0 {
		t.Fatal("a subscription was established with the wrong CA")
	}
}

// replicaCaughtUp reads a primary's INFO replication: a replica is
// online and has acknowledged everything the primary has written.
func replicaCaughtUp(info string) bool {
	var master int64 = -1
	caught := false
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
			fmt.Sscan(v, &master)
		}
	}
	for _, line := range strings.Split(info, "\r\n") {
		// slave0:ip=127.0.0.1,port=7001,state=online,offset=1234,lag=0
		if !strings.HasPrefix(line, "slave") || !strings.Contains(line, "state=online") {
			continue
		}
		_, rest, ok := strings.Cut(line, "offset=")
		if !ok {
			continue
		}
		var off int64
		fmt.Sscan(strings.SplitN(rest, ",", 2)[0], &off)
		if master >= 0 && off >= master {
			caught = true
		}
	}
	return caught
}
