package handlers

import (
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"

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
	// Limiter caps streams per user. Zero value means a LocalLimiter of 5.
	Limiter hub.ConnLimiter
	// Keepalive is the interval of SSE keepalive comments and WebSocket
	// pings. Zero value means 15s.
	Keepalive time.Duration
	// WriteTimeout bounds one write to a client; a client that does not
	// take its bytes within it is dropped. Zero value means 10s.
	WriteTimeout time.Duration
	// Ready reports whether the bus subscription is up, for /readyz.
	// Zero value means always ready.
	Ready func() bool
	// Logger. Zero value means slog.Default().
	Logger *slog.Logger
}

// Server holds the hub's HTTP routes.
type Server struct {
	cfg      Config
	hub      *hub.Hub
	auth     *Authenticator
	engine   *gin.Engine
	log      *slog.Logger
	draining atomic.Bool
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
	s := &Server{cfg: cfg, hub: h, auth: auth, log: cfg.Logger}

	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.Use(gin.Recovery(), s.accessLog)
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	reg := newMetricsRegistry(h, cfg.Ready)
	e.GET("/metrics", gin.WrapH(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	api := e.Group(cfg.BasePath)
	api.GET("/topologies/:id/events", s.handleSSE)
	s.engine = e
	return s, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// Drain refuses new streams (503) and ends the open ones; call it before
// http.Server.Shutdown, which would otherwise wait for streams that never
// go idle.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.hub.Shutdown(hub.DisconnectShutdown)
}

// accessLog logs one line per request: never the query string, which may
// carry a ticket or token.
func (s *Server) accessLog(c *gin.Context) {
	start := time.Now()
	c.Next()
	s.log.Info("http request",
		"method", c.Request.Method,
		"path", c.Request.URL.Path,
		"status", c.Writer.Status(),
		"duration", time.Since(start),
		"remote", c.ClientIP(),
	)
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
