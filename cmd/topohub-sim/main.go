// Command topohub-sim publishes realistic producer traffic to a hub's
// Redis: mutation lifecycles with their snapshot keys, decky service
// events and a flood of unrouted decky traffic. With --check it also
// follows the simulated topologies over WebSocket and SSE like real
// editors and, once the traffic is over, compares every client's state
// with Redis: a soak test of a deployment. See docs/soak.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"topohub/internal/sim"
)

// Exit codes.
const (
	exitOK      = 0
	exitDiffers = 1 // --check found a client whose state is not Redis's
	exitError   = 2 // bad flags, Redis or the hub unreachable
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type options struct {
	redisURL, prefix, ids       string
	topologies                  int
	rate, trafficRate, fail     float64
	clientRate                  float64
	duration, burstAt, settle   time.Duration
	seed                        uint64
	burst, clients              int
	check                       bool
	hubURL, base, token         string
	secret                      string
	issuer, audience, typ, role string
	transports                  string
}

func parse(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("topohub-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: topohub-sim [flags]\n\nPublishes producer traffic to Redis; with --check, soaks a hub with it (docs/soak.md).\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.redisURL, "redis", "", "Redis URL the producers publish to; default: the embedded broker of a development hub running beside it")
	fs.StringVar(&o.prefix, "prefix", sim.DefaultKeyPrefix, "prefix of the snapshot keys (the hub's TOPOHUB_KEY_PREFIX)")
	fs.IntVar(&o.topologies, "topologies", 3, "number of simulated topologies, named sim-1 … sim-N")
	fs.StringVar(&o.ids, "ids", "", "comma-separated topology ids to simulate instead of sim-1 … sim-N (the simulator owns them: it resets their keys)")
	fs.Float64Var(&o.rate, "rate", 5, "topology events per second and topology (lifecycle steps, status changes, decky service events)")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long the traffic lasts")
	fs.Uint64Var(&o.seed, "seed", 1, "seed: the same seed (and flags) gives the same traffic")
	fs.Float64Var(&o.fail, "fail-share", 0.1, "share of mutations that fail (each followed by a status change)")
	fs.Float64Var(&o.trafficRate, "traffic-rate", 50, "decky.*.traffic events per second, without topology_id (the hub drops them unrouted)")
	fs.IntVar(&o.burst, "burst", 0, "extra events sent at once to the first topology, to overflow its clients' queues")
	fs.DurationVar(&o.burstAt, "burst-at", 0, "when the burst starts (default: half the duration)")
	fs.BoolVar(&o.check, "check", false, "also follow the topologies through the hub and compare every client's state with Redis at the end")
	fs.StringVar(&o.hubURL, "hub", "http://127.0.0.1:8080", "with --check: the hub's base URL")
	fs.StringVar(&o.base, "base", "/api/v1", "with --check: the hub's TOPOHUB_BASE_PATH")
	fs.StringVar(&o.token, "token", "", "with --check: a JWT every client uses (one user: mind TOPOHUB_MAX_CONNS_PER_USER)")
	fs.StringVar(&o.secret, "secret", "", "with --check: the hub's JWT secret, to sign one token per client (default $TOPOHUB_JWT_SECRET)")
	fs.StringVar(&o.issuer, "jwt-issuer", "decnet", "with --secret: the iss claim")
	fs.StringVar(&o.audience, "jwt-audience", "decnet-dashboard", "with --secret: the aud claim")
	fs.StringVar(&o.typ, "jwt-type", "access", "with --secret: the typ claim")
	fs.StringVar(&o.role, "role", "viewer", "with --secret: the role claim")
	fs.IntVar(&o.clients, "clients", 1, "with --check: clients per transport (each WebSocket follows every topology; SSE has one stream per topology)")
	fs.StringVar(&o.transports, "transports", "ws,sse", "with --check: ws, sse or both")
	fs.Float64Var(&o.clientRate, "client-rate", 0, "with --check: make every client a slow editor taking at most this many frames per second (0: as fast as it can)")
	fs.DurationVar(&o.settle, "settle", 30*time.Second, "with --check: how long clients may take to catch up after the traffic")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.secret == "" {
		o.secret, _ = lookupEnv("TOPOHUB_JWT_SECRET")
	}
	if o.duration <= 0 {
		return nil, errors.New("--duration must be positive: the simulator stops by itself")
	}
	if o.topologies <= 0 && o.ids == "" {
		return nil, errors.New("--topologies must be positive")
	}
	if o.check && o.token == "" && o.secret == "" {
		return nil, errors.New("--check needs --token or --secret (or TOPOHUB_JWT_SECRET)")
	}
	if o.clients <= 0 {
		return nil, errors.New("--clients must be positive")
	}
	return o, nil
}

func (o *options) topologyIDs() []string {
	if o.ids != "" {
		var out []string
		for _, id := range strings.Split(o.ids, ",") {
			if id = strings.TrimSpace(id); id != "" {
				out = append(out, id)
			}
		}
		return out
	}
	out := make([]string, o.topologies)
	for i := range out {
		out[i] = "sim-" + strconv.Itoa(i+1)
	}
	return out
}

func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	o, err := parse(args, lookupEnv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "topohub-sim:", err)
		return exitError
	}
	if err := o.run(ctx, stdout, stderr); err != nil {
		if errors.Is(err, errDiffers) {
			return exitDiffers
		}
		fmt.Fprintln(stderr, "topohub-sim:", err)
		return exitError
	}
	return exitOK
}

var errDiffers = errors.New("clients differ from Redis")

func (o *options) run(ctx context.Context, stdout, stderr io.Writer) error {
	redisURL, hint := o.redisURL, ""
	if redisURL == "" {
		u, err := sim.ReadDevBroker()
		if err != nil {
			return err
		}
		redisURL, hint = u, " (noted by a development hub in "+sim.DevBrokerFile()+": is it still running?)"
	}
	ropts, err := redis.ParseURL(redisURL)
	if err != nil {
		return errors.New("--redis is not a valid redis:// or rediss:// URL")
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("redis at %s%s: %w", ropts.Addr, hint, err)
	}

	s, err := sim.New(rdb, sim.Config{
		Topologies:  o.topologyIDs(),
		Rate:        o.rate,
		TrafficRate: o.trafficRate,
		Duration:    o.duration,
		Seed:        o.seed,
		FailShare:   o.fail,
		KeyPrefix:   o.prefix,
		Burst:       o.burst,
		BurstAt:     o.burstAt,
	})
	if err != nil {
		return err
	}
	if err := s.Setup(ctx); err != nil {
		return err
	}
	var checker *sim.Checker
	if o.check {
		checker, err = sim.StartChecker(ctx, sim.CheckConfig{
			Hub: o.hubURL, BasePath: o.base, Token: o.token, Secret: []byte(o.secret),
			Issuer: o.issuer, Audience: o.audience, Type: o.typ, Role: o.role,
			TokenTTL:   o.duration + o.settle + 10*time.Minute,
			Topologies: s.Config().Topologies, Clients: o.clients,
			WebSocket: strings.Contains(o.transports, "ws"), SSE: strings.Contains(o.transports, "sse"),
			Redis: rdb, KeyPrefix: o.prefix, Settle: o.settle, ClientRate: o.clientRate,
			Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			return err
		}
		defer checker.Close()
	}
	fmt.Fprintf(stderr, "topohub-sim: %d topologies (%s), %g events/s each, %g traffic/s, for %s, seed %d\n",
		len(s.Config().Topologies), strings.Join(s.Config().Topologies, ","), s.Config().Rate, o.trafficRate, o.duration, o.seed)
	st, err := s.Run(ctx)
	if err != nil {
		return err
	}
	if checker == nil {
		st.WriteSummary(stdout)
		return nil
	}
	// Ctrl-C ends the traffic early; the check still runs.
	rep, err := checker.Finish(context.Background())
	if err != nil {
		return err
	}
	rep.Sent = st
	line, _ := json.Marshal(rep)
	fmt.Fprintf(stdout, "%s\n", line)
	st.WriteSummary(stdout)
	rep.WriteSummary(stdout)
	if !rep.OK {
		return errDiffers
	}
	return nil
}
