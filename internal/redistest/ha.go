package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Proc is one redis-server (or sentinel) process of a Sentinel or
// Cluster test deployment, started with its own port and directory and
// killed when the test ends.
type Proc struct {
	Addr   string
	Port   int
	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
	rdb    *redis.Client // Client's, made once
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Proc) Kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// Alive reports whether the process is still running.
func (p *Proc) Alive() bool { return p.cmd != nil }

// Client returns a client of this one process (RESP2, so that replies
// are arrays), made once and closed when the test ends. Not safe for
// concurrent first calls.
func (p *Proc) Client(tb testing.TB) *redis.Client {
	if p.rdb == nil {
		rdb := redis.NewClient(&redis.Options{Addr: p.Addr, MaxRetries: -1, DialTimeout: time.Second, Protocol: 2})
		tb.Cleanup(func() { rdb.Close() })
		p.rdb = rdb
	}
	return p.rdb
}

// needBinary skips the test when a Debian package is missing (.ci/run
// installs them).
func needBinary(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		tb.Skipf("redistest: %s is not installed (.ci/run installs it from Debian's packages)", name)
	}
}

// startProc runs bin with the config written by conf(port, dir) on a free
// port, and waits until it answers PING.
func startProc(tb testing.TB, bin string, conf func(port int, dir string) string, extra ...string) *Proc {
	tb.Helper()
	if os.Getenv(EnvURL) != "" {
		tb.Skip("redistest: this test starts its own servers; unset " + EnvURL)
	}
	needBinary(tb, bin)
	var lastErr error
	for range 5 {
		p, path := newProc(tb, conf)
		if lastErr = p.launch(bin, append([]string{path}, extra...)); lastErr == nil {
			tb.Cleanup(p.Kill)
			return p
		}
	}
	tb.Fatalf("redistest: %v", lastErr)
	return nil
}

func (p *Proc) launch(bin string, args []string) error {
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited
	if err := awaitPing(p.Addr, exited); err != nil {
		if errors.Is(err, errExited) {
			p.cmd = nil
		} else {
			p.Kill()
		}
		return fmt.Errorf("%s: %w", bin, err)
	}
	return nil
}

// serverConf is the configuration shared by the servers of a test
// deployment: loopback, no persistence, and a diskless full sync that
// starts at once (the default waits 5 s for more replicas).
func serverConf(port int, dir string) string {
	return fmt.Sprintf("port %d\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir %s\nlogfile \"\"\n"+
		"repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n", port, dir)
}

// WaitFor polls cond until it holds or d passes; it returns whether it held.
func WaitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	return true
}

// SentinelSet is a primary, one replica and three sentinels watching
// them as MasterName, with short failover timings.
type SentinelSet struct {
	MasterName string
	Primary    *Proc
	Replica    *Proc
	Sentinels  []*Proc
}

// SentinelDownAfter is the sentinels' down-after-milliseconds.
const SentinelDownAfter = 500 * time.Millisecond

// StartSentinel starts the set and returns once the sentinels know the
// replica and each other, so a failover can be authorised.
func StartSentinel(tb testing.TB) *SentinelSet {
	tb.Helper()
	ss := &SentinelSet{MasterName: "topohub-test"}
	ss.Primary = startProc(tb, "redis-server", serverConf)
	ss.Replica = startProc(tb, "redis-server", func(port int, dir string) string {
		return serverConf(port, dir) + fmt.Sprintf("replicaof 127.0.0.1 %d\n", ss.Primary.Port)
	})
	ctx := context.Background()
	if !WaitFor(10*time.Second, func() bool {
		info := ss.Replica.Client(tb).Info(ctx, "replication").Val()
		return strings.Contains(info, "master_link_status:up")
	}) {
		tb.Fatal("redistest: the replica did not sync")
	}
	for range 3 {
		ss.Sentinels = append(ss.Sentinels, startProc(tb, "redis-sentinel", func(port int, dir string) string {
			return fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile \"\"\n"+
				"sentinel monitor %s 127.0.0.1 %d 2\n"+
				"sentinel down-after-milliseconds %s %d\n"+
				"sentinel failover-timeout %s 2000\n"+
				"sentinel parallel-syncs %s 1\n",
				port, dir, ss.MasterName, ss.Primary.Port, ss.MasterName, SentinelDownAfter.Milliseconds(), ss.MasterName, ss.MasterName)
		}))
	}
	for _, s := range ss.Sentinels {
		c := s.Client(tb)
		if !WaitFor(20*time.Second, func() bool {
			m, err := c.Do(ctx, "SENTINEL", "MASTER", ss.MasterName).Slice()
			if err != nil {
				return false
			}
			kv := map[string]string{}
			for i := 0; i+1 < len(m); i += 2 {
				kv[fmt.Sprint(m[i])] = fmt.Sprint(m[i+1])
			}
			return kv["num-slaves"] == "1" && kv["num-other-sentinels"] == "2"
		}) {
			m, _ := c.Do(ctx, "SENTINEL", "MASTER", ss.MasterName).Slice()
			tb.Fatalf("redistest: the sentinels did not find the replica and each other: %v", m)
		}
	}
	return ss
}

// SentinelAddrs lists the sentinels' addresses.
func (ss *SentinelSet) SentinelAddrs() []string {
	var out []string
	for _, s := range ss.Sentinels {
		out = append(out, s.Addr)
	}
	return out
}

// URL is the hub's redis+sentinel:// URL of the set.
func (ss *SentinelSet) URL() string {
	u := "redis+sentinel://" + ss.Sentinels[0].Addr + "?sentinel_master_name=" + ss.MasterName
	for _, s := range ss.Sentinels[1:] {
		u += "&addr=" + s.Addr
	}
	return u
}

// MasterAddr asks a live sentinel for the current primary.
func (ss *SentinelSet) MasterAddr(tb testing.TB) string {
	for _, s := range ss.Sentinels {
		addr, err := s.Client(tb).Do(context.Background(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", ss.MasterName).StringSlice()
		if err == nil && len(addr) == 2 {
			return net.JoinHostPort(addr[0], addr[1])
		}
	}
	return ""
}

// Cluster is three primaries and three replicas made by redis-cli
// --cluster create, with a short node timeout.
type Cluster struct {
	Nodes []*Proc
}

// ClusterNodeTimeout is the nodes' cluster-node-timeout.
const ClusterNodeTimeout = time.Second

// StartCluster starts the six nodes, creates the cluster and returns once
// every node sees it ok.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	needBinary(tb, "redis-cli")
	c := &Cluster{}
	for range 6 {
		bus, err := freePort()
		if err != nil {
			tb.Fatal(err)
		}
		c.Nodes = append(c.Nodes, startProc(tb, "redis-server", func(port int, dir string) string {
			// cluster-port: the default (port + 10000) may not exist for
			// an ephemeral port.
			return serverConf(port, dir) + fmt.Sprintf("cluster-enabled yes\ncluster-config-file nodes.conf\n"+
				"cluster-node-timeout %d\ncluster-port %d\ncluster-replica-validity-factor 0\n", ClusterNodeTimeout.Milliseconds(), bus)
		}))
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	ctx := context.Background()
	for _, n := range c.Nodes {
		cl := n.Client(tb)
		if !WaitFor(20*time.Second, func() bool {
			return strings.Contains(cl.ClusterInfo(ctx).Val(), "cluster_state:ok")
		}) {
			tb.Fatalf("redistest: cluster not ok on %s", n.Addr)
		}
	}
	return c
}

// URL is the hub's redis+cluster:// URL, naming two seed nodes.
func (c *Cluster) URL() string {
	return "redis+cluster://" + c.Nodes[0].Addr + "?addr=" + c.Nodes[1].Addr
}

// Node returns the node listening on addr.
func (c *Cluster) Node(addr string) *Proc {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// StartTLS runs a redis-server that speaks only TLS on a free port with
// the given PEM certificate and key files.
func StartTLS(tb testing.TB, certFile, keyFile string) *Proc {
	tb.Helper()
	return startProcTLS(tb, func(port int, dir string) string {
		return fmt.Sprintf("port 0\ntls-port %d\nbind 127.0.0.1\nsave \"\"\ndir %s\nlogfile \"\"\n"+
			"tls-cert-file %s\ntls-key-file %s\ntls-auth-clients no\n", port, dir, certFile, keyFile)
	})
}

// startProcTLS is startProc for a TLS-only server: readiness is its
// listening socket, since a plain PING cannot be answered.
func startProcTLS(tb testing.TB, conf func(port int, dir string) string) *Proc {
	tb.Helper()
	needBinary(tb, "redis-server")
	p, path := newProc(tb, conf)
	cmd := exec.Command("redis-server", path)
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.exited) }()
	p.cmd = cmd
	tb.Cleanup(p.Kill)
	if !WaitFor(10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", p.Addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}) {
		tb.Fatalf("redistest: TLS redis-server on %s did not listen", p.Addr)
	}
	return p
}

// newProc picks a free port and a temporary directory for a server, and
// writes its configuration there; it returns the Proc (not started) and
// the configuration file's path.
func newProc(tb testing.TB, conf func(port int, dir string) string) (*Proc, string) {
	tb.Helper()
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	path := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(path, []byte(conf(port, dir)), 0o600); err != nil {
		tb.Fatal(err)
	}
	return &Proc{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, dir: dir}, path
}
