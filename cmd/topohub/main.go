// Command topohub is the real-time event hub for topology editors: one
// Redis pattern subscription per topic family, routed to WebSocket and
// legacy SSE clients. With no TOPOHUB_REDIS_URL it starts an embedded
// development broker and prints how to use it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"topohub/busredis"
	"topohub/handlers"
	"topohub/hub"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0) // -help printed the usage
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "topohub:", err)
		os.Exit(1)
	}
}

// shutdownGrace bounds the shutdown after the drain window.
const shutdownGrace = 5 * time.Second

func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runToken(args[1:], lookupEnv, stdout, stderr)
	}
	cfg, err := loadConfig(args, lookupEnv)
	if err != nil {
		return err
	}
	if cfg.ShowVersion {
		return printVersion(stdout)
	}
	log := newLogger(cfg, stderr)

	if err := checkDemo(cfg); err != nil {
		return err
	}
	families, err := hub.ParseFamilies(cfg.Families)
	if err != nil {
		return fmt.Errorf("TOPOHUB_FAMILIES: %w", err)
	}

	var dev *devBroker
	redisURL := cfg.RedisURL
	if redisURL == "" {
		dev, err = startDevBroker(cfg)
		if err != nil {
			return err
		}
		defer dev.Close()
		redisURL = dev.URL()
	} else if len(cfg.JWTSecret) < handlers.MinSecretLen {
		return fmt.Errorf("TOPOHUB_JWT_SECRET must be at least %d bytes (got %d); generate one with: openssl rand -hex 32", handlers.MinSecretLen, len(cfg.JWTSecret))
	}
	target, err := busredis.ParseURL(redisURL, cfg.RedisTLSCA)
	if err != nil {
		// ParseURL's errors never quote the URL, and so no password.
		return fmt.Errorf("TOPOHUB_REDIS_URL: %w (see docs/deployment.md for the redis://, redis+sentinel:// and redis+cluster:// forms)", err)
	}
	redis.SetLogger(newRedisLogger(log, target.Passwords()))
	tp, stopTracing, err := startTracing(lookupEnv, log)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		stopTracing(ctx)
	}()
	log.Info("redis", "shape", target.Shape.String(), "addrs", target.Addrs(), "tls", target.TLS(), "password_set", len(target.Passwords()) > 0)
	rdb := target.NewClient()
	defer closeWithin(rdb, time.Second, log)
	// Handshakes make small Redis calls concurrently (ticket, cap,
	// snapshots): the autopipeliner sends those in flight together as one
	// pipeline, one system call each way for many handshakes (per node on
	// a Cluster).
	calls, err := autoPipeline(rdb, false)
	if err != nil {
		return fmt.Errorf("redis autopipeline: %w", err)
	}
	// The stores of the request path (tickets, cap, revocations) wait on
	// the asynchronous face, whose waits honour the request's deadline
	// (busredis.process); the blocking face's do not.
	reqCalls, err := autoPipeline(rdb, true)
	if err != nil {
		return fmt.Errorf("redis autopipeline: %w", err)
	}

	h, err := hub.New(hub.Config{
		Families:         families,
		Snapshots:        busredis.NewSnapshots(calls, cfg.KeyPrefix).WithExistenceClient(reqCalls),
		QueueSize:        cfg.QueueSize,
		MaxLag:           cfg.MaxLag,
		MaxHistoryBytes:  cfg.MaxHistory,
		MaxTopologies:    cfg.MaxTopologies,
		MaxSubscriptions: cfg.MaxSubs,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	limiter := busredis.NewLimiter(reqCalls, busredis.LimiterConfig{Max: cfg.MaxConnsPerUser, Prefix: cfg.KeyPrefix, Logger: log})
	sub := busredis.NewTargetSubscriber(target, h, busredis.SubscriberConfig{
		Families: families, Publisher: rdb, Instance: limiter.InstanceID(), Logger: log, TracerProvider: tp,
		LagInterval: cfg.ProbeInterval, ProbeDeadline: cfg.ProbeDeadline,
	})
	var revocations hub.RevocationList
	if cfg.RevokedSet != "" {
		revocations = busredis.NewRevocations(reqCalls, cfg.RevokedSet)
	}

	srv, err := handlers.New(h, handlers.Config{
		BasePath: cfg.BasePath,
		Auth: handlers.AuthConfig{
			Secret:          []byte(cfg.JWTSecret),
			Issuer:          cfg.JWTIssuer,
			Audience:        cfg.JWTAudience,
			Type:            cfg.JWTType,
			RoleClaim:       cfg.RoleClaim,
			Roles:           cfg.StreamRoles,
			AllowQueryToken: cfg.AllowQueryToken,
			MaxSession:      cfg.MaxSession,
		},
		Tickets:          busredis.NewTickets(reqCalls, cfg.KeyPrefix, 0),
		TicketRate:       rate.Limit(cfg.TicketRate),
		TicketBurst:      cfg.TicketBurst,
		Revocations:      revocations,
		Limiter:          limiter,
		Keepalive:        cfg.Keepalive,
		AllowedOrigins:   cfg.AllowedOrigins,
		CORSOrigins:      cfg.CORSOrigins,
		TrustedProxies:   cfg.TrustedProxies,
		DisableWebSocket: cfg.DisableWS,
		RequestTimeout:   cfg.RequestTimeout,
		SendBuffer:       cfg.SendBuffer,
		Ready:            sub.Ready,
		BusLag:           sub.LastLag,
		Build:            buildInfo(),
		TracerProvider:   tp,
		Logger:           log,
	})
	if err != nil {
		return err
	}

	pprofSrv, err := startPprof(cfg.PprofAddr, log)
	if err != nil {
		return err
	}
	if pprofSrv != nil {
		defer pprofSrv.Close()
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	httpSrv := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	bgCtx, cancelBg := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Go(func() { sub.Run(bgCtx) })
	bg.Go(func() { h.Run(bgCtx, 0) })
	bg.Go(func() { limiter.Run(bgCtx) })
	bg.Go(func() { busredis.KeepClusterLayout(bgCtx, rdb, 0) })
	bg.Go(func() { srv.WatchRevocations(bgCtx, 0) })
	if err := startDemo(bgCtx, &bg, cfg, redisURL, log); err != nil {
		_ = ln.Close()
		cancelBg()
		bg.Wait()
		return err
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- httpSrv.Serve(ln) }()
	base := "http://" + displayAddr(ln.Addr())
	log.Info("topohub listening", "url", base, "families", cfg.Families)
	if dev != nil {
		if err := dev.Announce(stdout, cfg, base); err != nil {
			cancelBg()
			bg.Wait()
			return err
		}
	}

	select {
	case err := <-serveErr:
		cancelBg()
		bg.Wait()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// /readyz answers 503 and new streams are refused with 503 for the
	// drain window, so a load balancer stops routing here while the
	// listener still answers; then the open streams are closed (1001,
	// the SSE stream ends) and the listener with them.
	log.Info("shutting down", "drain_window", cfg.DrainWindow)
	srv.StopAccepting()
	window := time.NewTimer(cfg.DrainWindow)
	<-window.C
	shCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	srv.Drain()
	if err := httpSrv.Shutdown(shCtx); err != nil {
		log.Warn("forcing connections closed", "err", err)
		_ = httpSrv.Close()
	}
	// WebSocket handlers outlive Shutdown (hijacked connections); their
	// cap slots are released when they return.
	if err := srv.Wait(shCtx); err != nil {
		log.Warn("streams still closing at exit", "err", err)
	}
	cancelBg()
	bg.Wait()
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

// displayAddr turns a listen address into one a person can paste:
// an unspecified host becomes 127.0.0.1.
func displayAddr(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.IP == nil || ta.IP.IsUnspecified() {
		if ok {
			return fmt.Sprintf("127.0.0.1:%d", ta.Port)
		}
		return a.String()
	}
	return ta.String()
}

// closeWithin closes c but waits at most d: go-redis's Close waits for
// dials under way, and a dial to a Redis that never answers (a TLS
// handshake with a plain server) would hold the exit up for tens of
// seconds, past the documented grace.
func closeWithin(c io.Closer, d time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() { _ = c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		log.Warn("redis connections still closing at exit; not waiting for them")
	}
}

// autoPipeline returns the autopipeliner of a plain, failover or cluster
// client: the blocking face, or with async the asynchronous one.
func autoPipeline(rdb redis.UniversalClient, async bool) (*redis.AutoPipeliner, error) {
	type pipelined interface {
		AutoPipeline() (*redis.AutoPipeliner, error)
		AsyncAutoPipeline() (*redis.AutoPipeliner, error)
	}
	p, ok := rdb.(pipelined)
	if !ok {
		return nil, fmt.Errorf("%T has no autopipeliner", rdb)
	}
	if async {
		return p.AsyncAutoPipeline()
	}
	return p.AutoPipeline()
}
