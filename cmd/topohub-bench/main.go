// Command topohub-bench loads a topohub deployment through its wire
// protocol only: it opens WebSocket and SSE clients, publishes sequenced
// events on Redis at a fixed rate, and reports connect rate, handshake
// and delivery latency, loss (and how much of it a resync snapshot
// covered), and, given the hub's pid, the hub's RSS and CPU.
//
// It prints one JSON line on stdout and a human summary on stderr. See
// docs/performance.md, "The load tool: cmd/topohub-bench".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, errLoss):
		fmt.Fprintln(os.Stderr, "topohub-bench:", err)
		os.Exit(2)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "topohub-bench:", err)
		os.Exit(1)
	}
}

// errLoss is returned by run, after the report is printed, when
// --fail-on-loss is set and some events were lost without a resync
// covering them.
var errLoss = errors.New("events lost without a resync covering them")

// config is everything the flags set.
type config struct {
	HubURL   string // http(s)://host:port of the hub
	BasePath string // prefix of the API routes

	WS, SSE    int // clients of each transport
	PerClient  int // topologies per client
	Topologies int // distinct topologies

	Secret     string        // HS256 secret to mint per-client tokens
	Token      string        // one token for every client instead
	Issuer     string        // iss claim ("" leaves it out)
	Audience   string        // aud claim ("" leaves it out)
	Type       string        // typ claim ("" leaves it out)
	Role       string        // role claim value
	RoleClaim  string        // name of the role claim
	TokenTTL   time.Duration // exp - iat of minted tokens; 0: long enough for the run
	Insecure   bool          // skip TLS verification (https hubs with test certificates)
	RedisURL   string        // publisher's Redis
	Prefix     string        // Redis key prefix of the hub
	RunID      string        // names the topologies and users of this run
	Keep       bool          // leave the topologies in Redis afterwards
	Rate       float64       // bench events per second, all topologies together
	FloodRate  float64       // unroutable decky.*.traffic events per second
	Duration   time.Duration // publish phase
	Idle       time.Duration // idle hold between connect and publish
	Drain      time.Duration // longest wait for clients to catch up
	ConnConc   int           // concurrent handshakes
	ConnTO     time.Duration // one client's handshake timeout
	SourceIPs  int           // 127.0.0.x source addresses for a loopback hub
	PID        int           // hub process id for /proc figures (0: none)
	FailOnLoss bool          // exit 2 when lost_uncovered > 0
	Progress   time.Duration // progress log interval during publish (0: none)
}

// parseFlags reads args into a config and checks it.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("topohub-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.HubURL, "hub", "http://127.0.0.1:8080", "hub base URL, http:// or https://")
	fs.StringVar(&c.BasePath, "base-path", "/api/v1", "prefix of the hub's API routes")
	fs.IntVar(&c.WS, "ws", 100, "WebSocket clients (one connection each, --per-client subscribes)")
	fs.IntVar(&c.SSE, "sse", 0, "SSE clients (one stream per topology each)")
	fs.IntVar(&c.PerClient, "per-client", 1, "topologies per client")
	fs.IntVar(&c.Topologies, "topologies", 10, "distinct topologies the clients are spread over")
	fs.StringVar(&c.Secret, "secret", "", "HS256 secret to mint one token per client (distinct users); default $TOPOHUB_JWT_SECRET")
	fs.StringVar(&c.Token, "token", "", "one token for every client instead of --secret (one user: the hub's per-user cap applies); default $TOPOHUB_BENCH_TOKEN")
	fs.StringVar(&c.Issuer, "issuer", "decnet", "iss claim of minted tokens (empty: none)")
	fs.StringVar(&c.Audience, "audience", "decnet-dashboard", "aud claim of minted tokens (empty: none)")
	fs.StringVar(&c.Type, "type", "access", "typ claim of minted tokens (empty: none)")
	fs.StringVar(&c.Role, "role", "viewer", "role of minted tokens")
	fs.StringVar(&c.RoleClaim, "role-claim", "role", "claim that holds the role")
	fs.DurationVar(&c.TokenTTL, "token-ttl", 0, "lifetime of minted tokens (0: the run's length plus an hour)")
	fs.BoolVar(&c.Insecure, "insecure", false, "do not verify the hub's TLS certificate")
	fs.StringVar(&c.RedisURL, "redis", "redis://127.0.0.1:6379/0", "Redis the hub subscribes to (the publisher); default $TOPOHUB_REDIS_URL when set")
	fs.StringVar(&c.Prefix, "prefix", "topohub:", "the hub's Redis key prefix (TOPOHUB_KEY_PREFIX)")
	fs.StringVar(&c.RunID, "run-id", "", "names this run's topologies bench-<run-id>-<n> and users (default: random)")
	fs.BoolVar(&c.Keep, "keep", false, "leave the run's topologies in Redis at exit")
	fs.Float64Var(&c.Rate, "rate", 1000, "bench events per second, spread round robin over the topologies")
	fs.Float64Var(&c.FloodRate, "flood-rate", 0, "unroutable decky.<name>.traffic events per second (no topology_id; the hub must drop them)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "publish phase")
	fs.DurationVar(&c.Idle, "idle", 5*time.Second, "idle hold after connecting, before publishing (hub idle CPU)")
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "after publishing, longest wait for every client to be current")
	fs.IntVar(&c.ConnConc, "connect-concurrency", 64, "handshakes in flight at once")
	fs.DurationVar(&c.ConnTO, "connect-timeout", 15*time.Second, "one client's handshake timeout (dial to last ack)")
	fs.IntVar(&c.SourceIPs, "source-ips", 8, "spread dials over 127.0.0.1..127.0.0.N when the hub is on IPv4 loopback (0: kernel's choice)")
	fs.IntVar(&c.PID, "pid", 0, "hub process id on this machine: report its RSS and CPU from /proc")
	fs.BoolVar(&c.FailOnLoss, "fail-on-loss", false, "exit 2 when lost_uncovered > 0")
	fs.DurationVar(&c.Progress, "progress", 5*time.Second, "progress log interval while publishing (0: none)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["secret"] {
		c.Secret = os.Getenv("TOPOHUB_JWT_SECRET")
	}
	if !set["token"] {
		c.Token = os.Getenv("TOPOHUB_BENCH_TOKEN")
	}
	if u := os.Getenv("TOPOHUB_REDIS_URL"); !set["redis"] && u != "" {
		c.RedisURL = u
	}
	return c, c.check()
}

// check validates a parsed config.
func (c *config) check() error {
	switch {
	case c.WS < 0 || c.SSE < 0 || c.WS+c.SSE == 0:
		return errors.New("--ws and --sse: want at least one client")
	case c.Topologies < 1:
		return errors.New("--topologies: want at least 1")
	case c.PerClient < 1 || c.PerClient > c.Topologies:
		return fmt.Errorf("--per-client: want 1..--topologies (%d)", c.Topologies)
	case c.Secret == "" && c.Token == "":
		return errors.New("--secret (or $TOPOHUB_JWT_SECRET) or --token is required")
	case c.Secret != "" && c.Token != "":
		return errors.New("--secret and --token: give one")
	case c.Rate < 0 || c.FloodRate < 0:
		return errors.New("--rate and --flood-rate: want >= 0")
	case c.Duration <= 0 || c.Idle < 0 || c.Drain < 0 || c.ConnTO <= 0:
		return errors.New("--duration and --connect-timeout want > 0, --idle and --drain >= 0")
	case c.ConnConc < 1:
		return errors.New("--connect-concurrency: want at least 1")
	case c.SourceIPs < 0 || c.SourceIPs > 254:
		return errors.New("--source-ips: want 0..254")
	}
	u, err := url.Parse(c.HubURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--hub %q: want http://host:port or https://host:port", c.HubURL)
	}
	c.HubURL = strings.TrimRight(c.HubURL, "/")
	c.BasePath = "/" + strings.Trim(c.BasePath, "/")
	if c.BasePath == "/" {
		c.BasePath = ""
	}
	if c.RunID == "" {
		c.RunID = randomHex(4)
	}
	if err := checkToken(c.RunID); err != nil {
		return fmt.Errorf("--run-id: %w", err)
	}
	if c.TokenTTL <= 0 {
		c.TokenTTL = c.Idle + c.Duration + c.Drain + time.Hour
	}
	return nil
}

// checkToken refuses what cannot be part of a topology id (docs/protocol.md §1).
func checkToken(s string) error {
	if s == "" || strings.ContainsAny(s, ".*> \t\r\n\"\\") {
		return fmt.Errorf("%q: want a non-empty word without '.', '*', '>', quotes or white space", s)
	}
	return nil
}
