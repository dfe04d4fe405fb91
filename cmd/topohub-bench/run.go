package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// bench is one run: its clients and what they share.
type bench struct {
	cfg   *config
	log   *slog.Logger
	k     *sink
	d     *dialers
	cred  credentials
	ids   []string
	wsURL string

	ws    []*wsClient  // by client index; nil when it failed to connect
	sse   []*sseClient // by client index - cfg.WS
	hsDur []time.Duration

	closed bool // closeAll has run
}

// run is the whole tool: flags, setup, the four phases (connect, idle,
// publish, drain), the report. It returns an error on bad flags or a
// failed setup, and errLoss (after reporting) for --fail-on-loss.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	conns := cfg.WS + cfg.SSE*cfg.PerClient
	if nofile, err := raiseNoFile(); err != nil {
		log.Warn("could not raise the open-file limit", "err", err)
	} else if uint64(conns)+64 > nofile {
		log.Warn("open-file limit below the connections asked for", "limit", nofile, "connections", conns)
	}
	if cfg.Token != "" && conns > 5 {
		log.Warn("--token gives every client the same user: the hub caps streams per user (default 5), expect 429s; use --secret for one user per client", "connections", conns)
	}
	if cfg.SSE > 0 && cfg.PerClient > 5 {
		log.Warn("each SSE client opens --per-client streams as one user: over the hub's per-user cap (default 5) they are refused", "per_client", cfg.PerClient)
	}

	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		// The parse error quotes the URL, and with it any password.
		return errors.New("--redis is not a valid redis:// or rediss:// URL")
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("redis %s: %w", ropts.Addr, err)
	}

	d, err := newDialers(cfg)
	if err != nil {
		return err
	}
	defer d.close()
	if err := preflight(ctx, d, cfg, log); err != nil {
		return err
	}

	b := &bench{
		cfg:   cfg,
		log:   log,
		k:     &sink{hist: &histogram{}, errs: newErrorCounts(log), topoPrefix: []byte("bench-" + cfg.RunID + "-")},
		d:     d,
		cred:  credentials{cfg: cfg, now: time.Now()},
		ws:    make([]*wsClient, cfg.WS),
		sse:   make([]*sseClient, cfg.SSE),
		hsDur: make([]time.Duration, cfg.WS+cfg.SSE),
	}
	b.wsURL = "ws" + cfg.HubURL[len("http"):] + cfg.BasePath + "/ws"
	for n := range cfg.Topologies {
		b.ids = append(b.ids, "bench-"+cfg.RunID+"-"+strconv.Itoa(n))
	}
	if err := createTopologies(ctx, rdb, cfg.Prefix, b.ids); err != nil {
		return err
	}
	if !cfg.Keep {
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := deleteTopologies(cctx, rdb, cfg.Prefix, b.ids); err != nil {
				log.Warn("cleanup", "err", err)
			}
		}()
	}
	log.Info("topohub-bench starting", "run_id", cfg.RunID, "hub", cfg.HubURL, "ws", cfg.WS, "sse", cfg.SSE,
		"per_client", cfg.PerClient, "topologies", cfg.Topologies, "rate", cfg.Rate, "source_ips", len(d.source))

	rep := &report{RunID: cfg.RunID, WSClients: cfg.WS, SSEClients: cfg.SSE, PerClient: cfg.PerClient, Topologies: cfg.Topologies, Rate: cfg.Rate, FloodRate: cfg.FloodRate}
	hub := newHubProbe(cfg.PID, log)
	if err := hub.sample("before"); err != nil {
		return err
	}

	// Connect.
	t0 := time.Now()
	b.connectAll(ctx)
	rep.connectPhase(b, time.Since(t0))
	log.Info("connected", "clients", rep.ConnectedClients, "of", cfg.WS+cfg.SSE, "seconds", rep.ConnectSeconds, "rate", rep.ConnectRate)
	defer b.closeAll()
	if rep.ConnectedClients == 0 {
		errs, _ := b.k.errs.snapshot()
		return fmt.Errorf("no client connected (errors %v); check --hub, --base-path, --prefix (a wrong prefix gives not_found) and the token claims", errs)
	}
	_ = hub.sample("connected")

	// Idle.
	sleepCtx(ctx, cfg.Idle)
	_ = hub.sample("idle_end")

	// Publish.
	pub := newPublisher(rdb, log, cfg.Prefix, b.ids, cfg.RunID, cfg.Rate, cfg.FloodRate)
	selfBefore, selfAt := selfCPU(), time.Now()
	stopProgress := b.progress(ctx)
	res := pub.run(ctx, cfg.Duration)
	stopProgress()
	_ = hub.sample("publish_end")
	rep.BenchCPUPublishPct = round(100 * float64(selfCPU()-selfBefore) / float64(time.Since(selfAt)))
	log.Info("published", "events", res.published, "seconds", round(res.stop.Sub(res.start).Seconds()))
	if res.published > 0 && res.unreceived == res.published {
		log.Warn("no PUBLISH reached a subscriber: is the hub subscribed to this Redis?")
	}

	// Drain.
	current, live, drainEnd := b.drain(ctx, res.final, cfg.Drain)
	log.Info("drained", "clients_current", current, "seconds", round(drainEnd.Sub(res.stop).Seconds()))

	b.closeAll()
	rep.finish(b, &res, current, live, hub)
	rep.Interrupted = ctx.Err() != nil
	if err := rep.write(stdout, stderr); err != nil {
		return err
	}
	if cfg.FailOnLoss && rep.LostUncovered > 0 {
		return fmt.Errorf("%w: %d", errLoss, rep.LostUncovered)
	}
	return ctx.Err()
}

// preflight checks the hub answers before anything is created. /readyz
// is 200 only while the hub's bus subscription is up.
func preflight(ctx context.Context, d *dialers, cfg *config, log *slog.Logger) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, cfg.HubURL+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("--hub: %w", err)
	}
	resp, err := d.ws[0].Do(req)
	if err != nil {
		return fmt.Errorf("hub unreachable: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusServiceUnavailable:
		return fmt.Errorf("hub %s/readyz: 503, its bus subscription is not established", cfg.HubURL)
	default:
		log.Warn("hub /readyz did not answer 200; carrying on", "status", resp.StatusCode)
		return nil
	}
}

// topologiesOf spreads clients evenly: client i follows topologies
// i*K .. i*K+K-1 modulo T, K distinct ones.
func (b *bench) topologiesOf(i int) []int {
	t := make([]int, b.cfg.PerClient)
	for j := range t {
		t[j] = (i*b.cfg.PerClient + j) % b.cfg.Topologies
	}
	return t
}

func (b *bench) sseURL(topo int) string {
	return b.cfg.HubURL + b.cfg.BasePath + "/topologies/" + b.ids[topo] + "/events"
}

// connectAll opens every client, --connect-concurrency at a time.
func (b *bench) connectAll(ctx context.Context) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(b.cfg.ConnConc, b.cfg.WS+b.cfg.SSE) {
		wg.Go(func() {
			for i := range jobs {
				b.connectOne(ctx, i)
			}
		})
	}
	for i := range b.cfg.WS + b.cfg.SSE {
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

func (b *bench) connectOne(ctx context.Context, i int) {
	tok, err := b.cred.tokenFor(i)
	start := time.Now() // the handshake starts at the dial
	if err == nil {
		if i < b.cfg.WS {
			c := newWSClient(i, b.k, b.topologiesOf(i))
			if err = c.connect(ctx, b.d, b.wsURL, tok, b.cfg.ConnTO); err == nil {
				b.ws[i] = c
			}
		} else {
			c := newSSEClient(i, b.k, b.topologiesOf(i))
			if err = c.connect(ctx, b.d, b.sseURL, tok, b.cfg.ConnTO); err == nil {
				b.sse[i-b.cfg.WS] = c
			}
		}
	}
	if err != nil {
		var ce *connectError
		if !errors.As(err, &ce) {
			ce = &connectError{"setup", err}
		}
		b.k.errs.add(ce.kind, ce.err)
		return
	}
	b.hsDur[i] = time.Since(start)
}

// eachSub calls f for every subscription of every connected client, with
// whether the client is still connected.
func (b *bench) eachSub(f func(s *subStats, alive bool)) {
	for _, c := range b.ws {
		if c != nil {
			alive := c.alive.Load()
			for j := range c.subs {
				f(&c.subs[j], alive)
			}
		}
	}
	for _, c := range b.sse {
		if c != nil {
			alive := c.alive()
			for j := range c.subs {
				f(&c.subs[j], alive)
			}
		}
	}
}

// currentClients counts the connected clients that have the final seq of
// each of their topologies, and those still connected.
func (b *bench) currentClients(final []int64) (current, live int) {
	check := func(subs []subStats) bool {
		for j := range subs {
			if subs[j].last.Load() < final[subs[j].topo] {
				return false
			}
		}
		return true
	}
	for _, c := range b.ws {
		if c != nil && c.alive.Load() {
			live++
			if check(c.subs) {
				current++
			}
		}
	}
	for _, c := range b.sse {
		if c != nil && c.alive() {
			live++
			if check(c.subs) {
				current++
			}
		}
	}
	return current, live
}

// drainPoll is how often the drain phase looks at the clients.
const drainPoll = 10 * time.Millisecond

// drain waits up to d for every live client to be current.
func (b *bench) drain(ctx context.Context, final []int64, d time.Duration) (current, live int, end time.Time) {
	deadline := time.Now().Add(d)
	for {
		current, live = b.currentClients(final)
		if current == live || !time.Now().Before(deadline) || ctx.Err() != nil {
			return current, live, time.Now()
		}
		sleepCtx(ctx, drainPoll)
	}
}

// progress logs deliveries every --progress until the returned func is
// called.
func (b *bench) progress(ctx context.Context) (stop func()) {
	if b.cfg.Progress <= 0 {
		return func() {}
	}
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(b.cfg.Progress)
		defer t.Stop()
		var prev int64
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				var n int64
				b.eachSub(func(s *subStats, _ bool) { n += s.delivered.Load() })
				b.log.Info("progress", "delivered", n, "per_s", round(float64(n-prev)/b.cfg.Progress.Seconds()))
				prev = n
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

// closeAll closes every client, --connect-concurrency at a time, and
// waits for every reader. Calls after the first do nothing.
func (b *bench) closeAll() {
	if b.closed {
		return
	}
	b.closed = true
	jobs := make(chan func())
	var wg sync.WaitGroup
	for range b.cfg.ConnConc {
		wg.Go(func() {
			for f := range jobs {
				f()
			}
		})
	}
	for _, c := range b.ws {
		if c != nil {
			jobs <- c.close
		}
	}
	for _, c := range b.sse {
		if c != nil {
			jobs <- c.close
		}
	}
	close(jobs)
	wg.Wait()
	b.k.readers.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
