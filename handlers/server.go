package handlers

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"topohub/hub"
)

// Config configures the routes. The zero value of every field but
// Auth.Secret means the default written beside it.
type Config struct {
	// BasePath prefixes the API routes. Zero value means "/api/v1".
	BasePath string
	// Auth configures token verification.
	Auth AuthConfig
	// Tickets mints and redeems tickets. Zero value means tickets are
	// refused.
	Tickets TicketStore
	// TicketRate is how many tickets one user may mint per second,
	// sustained; over it POST /auth/sse-ticket answers 429. Zero value
	// means 1 per second.
	TicketRate rate.Limit
	// TicketBurst is how many tickets one user may mint at once. Zero
	// value means 10.
	TicketBurst int
	// Revocations lists revoked token ids (jti): such a token, or a ticket
	// minted from it, is refused with 401, and WatchRevocations ends the
	// connections it opened. Zero value means no revocation checks.
	Revocations hub.RevocationList
	// Limiter caps streams per user. Zero value means a LocalLimiter of 5.
	Limiter hub.ConnLimiter
	// Keepalive is the interval of SSE keepalive comments and WebSocket
	// pings. Zero value means 15s.
	Keepalive time.Duration
	// WriteTimeout bounds one write to a client, and the wait for the pong
	// of a WebSocket ping; a client that does not take its bytes or answer
	// within it is dropped. Zero value means 10s.
	WriteTimeout time.Duration
	// AllowedOrigins lists the browser origins allowed to open the
	// WebSocket besides the request's own host. An entry with "://"
	// ("https://dash.example.com") is matched against the Origin's
	// scheme://host, one without against its host; both may use
	// path.Match wildcards ("*.example.com"), case-insensitively. A
	// request without an Origin header (not a browser) is always allowed.
	// Zero value means only same-host origins.
	AllowedOrigins []string
	// CORSOrigins lists the browser origins, in AllowedOrigins' pattern
	// syntax, that may call the ticket route, open the SSE route and load
	// the client library from another origin (CORS, with credentials, so
	// the origin is echoed and never "*"); they may open the WebSocket
	// too. Zero value means same origin only.
	CORSOrigins []string
	// TrustedProxies lists the peers (CIDRs or addresses) whose
	// X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto and Forwarded
	// headers are believed: the client address logged, the public host
	// the same-origin checks compare Origin with, and the scheme that
	// decides the resume cookie's Secure attribute. Zero value means
	// nobody's: the headers are ignored.
	TrustedProxies []string
	// ControlRate limits the control messages one WebSocket may send per
	// second; over it a message is answered rate_limited and ignored.
	// Zero value means 20 per second; rate.Inf disables the limit.
	ControlRate rate.Limit
	// ControlBurst is the burst of ControlRate. Zero value means 40.
	ControlBurst int
	// MaxControlViolations is how many rate_limited replies one WebSocket
	// may earn within 10 s; one more closes it with ClosePolicy (1008).
	// Zero value means 50.
	MaxControlViolations int
	// MaxMessageBytes caps one server WebSocket message: frames popped
	// together are joined by newlines up to it, and a frame larger than
	// it goes alone. Zero value means 32 KiB, the default read limit of
	// common WebSocket client libraries.
	MaxMessageBytes int
	// DisableWebSocket leaves the WebSocket route out, so browsers fall
	// back to the SSE route (an operator's escape hatch, and how the
	// fallback is tested). Zero value means the WebSocket is served.
	DisableWebSocket bool
	// RequestTimeout bounds every Redis call a request waits for before
	// it is answered: ticket mint and redemption, revocation check, cap
	// admission, the snapshot read of an SSE admission or a WebSocket
	// subscribe, and the checks of a WebSocket refresh. Past it the
	// request is answered 503 with Retry-After (WebSocket messages:
	// unavailable). Zero value means 1s.
	RequestTimeout time.Duration
	// SendBuffer is the socket send buffer (SO_SNDBUF) set on every
	// hijacked stream connection, so a client that stops reading pins at
	// most this much kernel memory (Linux doubles the value for its
	// bookkeeping and caps it at net.core.wmem_max) instead of what
	// tcp_wmem autotuning allows (4 MiB by default). Zero value means
	// 256 KiB; a negative value leaves the kernel's autotuning.
	SendBuffer int
	// Ready reports whether the bus subscription is up, for /readyz.
	// Zero value means always ready.
	Ready func() bool
	// BusLag reports the round trip of the newest bus lag probe, false
	// before the first, for the topohub_bus_lag_seconds metric. Zero value
	// means the metric is not exported.
	BusLag func() (time.Duration, bool)
	// Build names the running build in topohub_build_info. Zero value
	// means empty labels.
	Build BuildInfo
	// TracerProvider makes the spans of handshakes (auth, snapshot read,
	// admission) and ticket mints. Zero value means otel's global
	// provider, which records nothing unless cmd/topohub installed one.
	TracerProvider trace.TracerProvider
	// Logger. Zero value means slog.Default().
	Logger *slog.Logger
}

// TracerName is the instrumentation scope of the routes' spans.
const TracerName = "topohub/handlers"

// Server holds the hub's HTTP routes.
type Server struct {
	cfg     Config
	hub     *hub.Hub
	auth    *Authenticator
	minting *userRates // per-user rate of ticket minting
	engine  *gin.Engine
	log     *slog.Logger
	origins []originPattern
	// corsOrigins is Config.CORSOrigins compiled; proxies
	// Config.TrustedProxies.
	corsOrigins []originPattern
	proxies     trustedProxies
	draining    atomic.Bool
	streams     streamSet // open SSE and WebSocket handlers
	metrics     *serverMetrics
	tracer      trace.Tracer

	logRetries   rate.Sometimes // snapshot retries, logged rate-limited
	logOversized rate.Sometimes // frames over 1 MiB not sent
}

// New builds the routes over h.
func New(h *hub.Hub, cfg Config) (*Server, error) {
	if cfg.BasePath == "" {
		cfg.BasePath = "/api/v1"
	}
	cfg.BasePath = "/" + strings.Trim(cfg.BasePath, "/")
	if cfg.Limiter == nil {
		cfg.Limiter = hub.NewLocalLimiter(5)
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 15 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.ControlRate == 0 {
		cfg.ControlRate = 20
	}
	if cfg.ControlBurst <= 0 {
		cfg.ControlBurst = 40
	}
	if cfg.MaxControlViolations <= 0 {
		cfg.MaxControlViolations = 50
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 32 << 10
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = time.Second
	}
	if cfg.SendBuffer == 0 {
		cfg.SendBuffer = DefaultSendBuffer
	}
	origins, err := compileOrigins(cfg.AllowedOrigins)
	if err != nil {
		return nil, err
	}
	corsOrigins, err := compileOrigins(cfg.CORSOrigins)
	if err != nil {
		return nil, err
	}
	proxies, err := parseTrustedProxies(cfg.TrustedProxies)
	if err != nil {
		return nil, err
	}
	if cfg.TicketRate == 0 {
		cfg.TicketRate = 1
	}
	if cfg.TicketBurst <= 0 {
		cfg.TicketBurst = 10
	}
	if cfg.Ready == nil {
		cfg.Ready = func() bool { return true }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	auth, err := NewAuthenticator(cfg.Auth, cfg.Tickets)
	if err != nil {
		return nil, err
	}
	auth.revocations = cfg.Revocations
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	reg, metrics := newMetricsRegistry(h, cfg.Ready, cfg.BusLag, cfg.Build)
	auth.metrics = metrics
	s := &Server{cfg: cfg, hub: h, auth: auth, log: cfg.Logger, origins: origins, metrics: metrics,
		corsOrigins: corsOrigins, proxies: proxies,
		tracer:       cfg.TracerProvider.Tracer(TracerName),
		logRetries:   rate.Sometimes{First: 5, Interval: 10 * time.Second},
		logOversized: rate.Sometimes{First: 5, Interval: 10 * time.Second}}
	s.minting = newUserRates(cfg.TicketRate, cfg.TicketBurst, maxMintingUsers)

	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	// gin believes X-Forwarded-For from every peer unless told otherwise.
	if err := e.SetTrustedProxies(proxies.strings()); err != nil {
		return nil, fmt.Errorf("trusted proxies: %w", err)
	}
	e.Use(gin.Recovery(), s.accessLog)
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", gin.WrapH(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	api := e.Group(cfg.BasePath)
	refuse := s.cors(true)
	api.GET("/topologies/:id/events", refuse, s.handleSSE)
	api.OPTIONS("/topologies/:id/events", refuse, options)
	api.POST("/auth/sse-ticket", refuse, s.handleTicket)
	api.OPTIONS("/auth/sse-ticket", refuse, options)
	if !cfg.DisableWebSocket {
		api.GET("/ws", s.handleWebSocket)
	}
	serveWeb(e, s.cors(false))
	s.engine = e
	return s, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// DefaultSendBuffer is Config.SendBuffer's default.
const DefaultSendBuffer = 256 << 10

// StopAccepting starts a shutdown: from now on /readyz answers 503 and new
// streams are refused with 503, while the open ones carry on. A load
// balancer that polls /readyz takes the instance out; Drain then ends
// the streams.
func (s *Server) StopAccepting() {
	s.draining.Store(true)
}

// Drain refuses new streams (503) and ends the open ones; call it before
// http.Server.Shutdown, which would otherwise wait for streams that never
// go idle.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.hub.Shutdown(hub.DisconnectShutdown)
}

// Wait returns when every stream handler has returned, and so released
// its slot of the per-user cap, or when ctx ends. http.Server.Shutdown
// does not wait for WebSocket handlers (their connections are hijacked):
// call Wait after it, so a rolling restart does not leave slots counted
// until the instance's liveness key expires.
func (s *Server) Wait(ctx context.Context) error {
	return s.streams.wait(ctx)
}

// streamSet counts open stream handlers. A WaitGroup would do but for its
// rule that Add may not race a Wait on a zero counter, which a stream
// admitted just as Drain runs would break.
type streamSet struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to zero; nil when nobody waits
}

func (ss *streamSet) add() {
	ss.mu.Lock()
	ss.n++
	ss.mu.Unlock()
}

func (ss *streamSet) done() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.n--; ss.n == 0 && ss.idle != nil {
		close(ss.idle)
		ss.idle = nil
	}
}

func (ss *streamSet) wait(ctx context.Context) error {
	ss.mu.Lock()
	if ss.n == 0 {
		ss.mu.Unlock()
		return nil
	}
	if ss.idle == nil {
		ss.idle = make(chan struct{})
	}
	idle := ss.idle
	ss.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d streams still open: %w", ss.count(), ctx.Err())
	}
}

func (ss *streamSet) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.n
}

// accessLog logs one line per request: never the query string, which may
// carry a ticket or token, and the path with what may be a credential put
// there by mistake redacted (redactPath).
//
// Probes and scrapes (/healthz, /readyz, /metrics), which come every few
// seconds, are logged at debug; everything else at info.
func (s *Server) accessLog(c *gin.Context) {
	start := time.Now()
	c.Next()
	level := slog.LevelInfo
	switch c.Request.URL.Path {
	case "/healthz", "/readyz", "/metrics":
		level = slog.LevelDebug
	}
	if !s.log.Enabled(c.Request.Context(), level) {
		return
	}
	s.log.Log(c.Request.Context(), level, "http request",
		"method", c.Request.Method,
		"path", redactPath(c.Request.URL.Path),
		"status", c.Writer.Status(),
		"duration_ms", millis(time.Since(start)),
		"remote", s.clientIP(c),
	)
}

// millis is d in milliseconds, as logs write durations.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// clientIP is the client's address: gin's reading (X-Forwarded-For or
// X-Real-IP from a trusted proxy, else the peer), or the for= of a
// trusted proxy's Forwarded header when it sends only that.
func (s *Server) clientIP(c *gin.Context) string {
	if ip := s.proxies.forwardedFor(c.Request); ip != "" {
		return ip
	}
	return c.ClientIP()
}

func (s *Server) healthz(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
}

func (s *Server) readyz(c *gin.Context) {
	if !s.cfg.Ready() || s.draining.Load() {
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "not ready", "bus": s.cfg.Ready()})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "clients": s.hub.Clients()})
}
