package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// config is everything cmd/topohub reads from flags and TOPOHUB_*
// variables. A flag wins over its variable; the variable over the default.
type config struct {
	Addr            string
	RedisURL        string
	RedisTLSCA      string
	JWTSecret       string
	JWTIssuer       string
	JWTAudience     string
	JWTType         string
	RoleClaim       string
	StreamRoles     []string
	BasePath        string
	MaxConnsPerUser int
	Keepalive       time.Duration
	AllowedOrigins  []string
	CORSOrigins     []string
	TrustedProxies  []string
	AllowQueryToken bool
	KeyPrefix       string
	QueueSize       int
	MaxLag          time.Duration
	MaxHistory      int
	MaxTopologies   int
	ProbeInterval   time.Duration
	ProbeDeadline   time.Duration
	PprofAddr       string
	MaxSubs         int
	Families        string
	LogFormat       string
	TicketRate      float64
	TicketBurst     int
	RevokedSet      string
	DisableWS       bool
	Demo            bool
	RequestTimeout  time.Duration
	MaxSession      time.Duration
	SendBuffer      int
	DrainWindow     time.Duration
	LogLevel        string

	// ShowVersion is -version: print the build and exit (not a setting).
	ShowVersion bool
}

type envFlag struct {
	name, env, def, usage string
	set                   func(string) error
}

// flagDefs lists every setting, bound to c.
func flagDefs(c *config) []envFlag {
	str := func(p *string) func(string) error { return func(v string) error { *p = v; return nil } }
	list := func(p *[]string) func(string) error {
		return func(v string) error {
			*p = nil
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					*p = append(*p, s)
				}
			}
			return nil
		}
	}
	num := func(p *int) func(string) error {
		return func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return fmt.Errorf("want a positive integer, got %q", v)
			}
			*p = n
			return nil
		}
	}
	dur := func(p *time.Duration) func(string) error {
		return func(v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("want a positive duration such as 15s, got %q", v)
			}
			*p = d
			return nil
		}
	}
	float := func(p *float64) func(string) error {
		return func(v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				return fmt.Errorf("want a positive number, got %q", v)
			}
			*p = f
			return nil
		}
	}
	boolean := func(p *bool) func(string) error {
		return func(v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("want true or false, got %q", v)
			}
			*p = b
			return nil
		}
	}
	return []envFlag{
		{"addr", "TOPOHUB_ADDR", ":8080", "HTTP listen address", str(&c.Addr)},
		{"redis-url", "TOPOHUB_REDIS_URL", "", "Redis URL: redis[s]://host:6379/0, redis[s]+sentinel://host:26379?sentinel_master_name=NAME&addr=host2:26379, redis[s]+cluster://host:6379?addr=host2:6379; empty starts an embedded development broker", str(&c.RedisURL)},
		{"redis-tls-ca", "TOPOHUB_REDIS_TLS_CA", "", "PEM file of the CAs a rediss:// server's certificate must chain to (empty: the system's)", str(&c.RedisTLSCA)},
		{"jwt-secret", "TOPOHUB_JWT_SECRET", "", "HS256 secret, at least 32 bytes; required with a Redis URL", str(&c.JWTSecret)},
		{"jwt-issuer", "TOPOHUB_JWT_ISSUER", "decnet", "required iss claim (empty: not checked)", str(&c.JWTIssuer)},
		{"jwt-audience", "TOPOHUB_JWT_AUDIENCE", "decnet-dashboard", "required aud claim (empty: not checked)", str(&c.JWTAudience)},
		{"jwt-type", "TOPOHUB_JWT_TYPE", "access", "required typ claim (empty: not checked)", str(&c.JWTType)},
		{"role-claim", "TOPOHUB_ROLE_CLAIM", "role", "claim holding the role", str(&c.RoleClaim)},
		{"stream-roles", "TOPOHUB_STREAM_ROLES", "viewer,admin", "roles allowed to stream (comma-separated)", list(&c.StreamRoles)},
		{"base-path", "TOPOHUB_BASE_PATH", "/api/v1", "prefix of the API routes", str(&c.BasePath)},
		{"max-conns-per-user", "TOPOHUB_MAX_CONNS_PER_USER", "5", "streams per user, WebSocket and SSE together", num(&c.MaxConnsPerUser)},
		{"keepalive", "TOPOHUB_KEEPALIVE", "15s", "keepalive interval", dur(&c.Keepalive)},
		{"allowed-origins", "TOPOHUB_ALLOWED_ORIGINS", "", "WebSocket Origin allow-list (comma-separated; empty: same host only)", list(&c.AllowedOrigins)},
		{"cors-origins", "TOPOHUB_CORS_ORIGINS", "", "origins allowed to mint tickets, open SSE streams and load /topohub.js across origins (comma-separated patterns as for allowed-origins; empty: same origin only)", list(&c.CORSOrigins)},
		{"trusted-proxies", "TOPOHUB_TRUSTED_PROXIES", "", "proxies (comma-separated CIDRs or addresses) whose X-Forwarded-* and Forwarded headers are believed (empty: none)", list(&c.TrustedProxies)},
		{"allow-query-token", "TOPOHUB_ALLOW_QUERY_TOKEN", "false", "accept a raw JWT in ?token= (legacy clients)", boolean(&c.AllowQueryToken)},
		{"key-prefix", "TOPOHUB_KEY_PREFIX", "topohub:", "prefix of every Redis key", str(&c.KeyPrefix)},
		{"queue-size", "TOPOHUB_QUEUE_SIZE", "256", "events a subscriber may fall behind its topology before a resync", num(&c.QueueSize)},
		{"max-lag", "TOPOHUB_MAX_LAG", "1s", "age of the oldest undelivered event past which a subscriber is resynced", dur(&c.MaxLag)},
		{"max-history-bytes", "TOPOHUB_MAX_HISTORY_BYTES", "134217728", "data bytes of all topologies' resume histories together; over it the least recently active are dropped", num(&c.MaxHistory)},
		{"max-topologies", "TOPOHUB_MAX_TOPOLOGIES", "100000", "topologies the hub keeps state for; over it unwatched ones are forgotten", num(&c.MaxTopologies)},
		{"probe-interval", "TOPOHUB_PROBE_INTERVAL", "2s", "how often the bus probe is published through Redis and expected back on the subscription", dur(&c.ProbeInterval)},
		{"probe-deadline", "TOPOHUB_PROBE_DEADLINE", "4s", "a probe not read back within it marks the bus down and re-subscribes (at least 1.5 intervals)", dur(&c.ProbeDeadline)},
		{"pprof-addr", "TOPOHUB_PPROF_ADDR", "", "loopback address for net/http/pprof, e.g. 127.0.0.1:6060 (empty: off)", str(&c.PprofAddr)},
		{"max-subscriptions", "TOPOHUB_MAX_SUBSCRIPTIONS", "100", "topologies per WebSocket connection", num(&c.MaxSubs)},
		{"families", "TOPOHUB_FAMILIES", "topology=segment,decky=payload:topology_id", "topic families and their routing", str(&c.Families)},
		{"ticket-rate", "TOPOHUB_TICKET_RATE", "1", "tickets one user may mint per second, sustained", float(&c.TicketRate)},
		{"ticket-burst", "TOPOHUB_TICKET_BURST", "10", "tickets one user may mint at once", num(&c.TicketBurst)},
		{"revoked-set", "TOPOHUB_REVOKED_SET", "", "Redis set of revoked token ids (jti); empty: no revocation checks", str(&c.RevokedSet)},
		{"disable-websocket", "TOPOHUB_DISABLE_WEBSOCKET", "false", "serve only the legacy SSE route (clients fall back to it)", boolean(&c.DisableWS)},
		{"request-timeout", "TOPOHUB_REQUEST_TIMEOUT", "1s", "deadline of the Redis calls a request waits for (ticket, revocation, cap, snapshot); past it 503 with Retry-After", dur(&c.RequestTimeout)},
		{"max-session", "TOPOHUB_MAX_SESSION", "24h", "longest session one token or ticket opens, whatever its exp", dur(&c.MaxSession)},
		{"send-buffer", "TOPOHUB_SEND_BUFFER", "262144", "socket send buffer (SO_SNDBUF, bytes) of each stream connection; bounds the kernel memory a stalled reader pins", num(&c.SendBuffer)},
		{"drain-window", "TOPOHUB_DRAIN_WINDOW", "1s", "on SIGTERM, how long /readyz and new streams answer 503 before open streams are closed", dur(&c.DrainWindow)},
		{"log-format", "TOPOHUB_LOG_FORMAT", "text", "log format: text or json", str(&c.LogFormat)},
		{"log-level", "TOPOHUB_LOG_LEVEL", "info", "log level: debug, info, warn or error (probes and /metrics hits are debug)", str(&c.LogLevel)},
		{"demo", "TOPOHUB_DEMO", "false", "development mode with simulated producers on demo, demo-east and demo-west (embedded broker only)", boolean(&c.Demo)},
	}
}

// loadConfig reads the defaults, then the environment (a variable set to
// the empty string counts: TOPOHUB_JWT_ISSUER= turns the issuer check
// off), then the flags. -help answers flag.ErrHelp (exit 0).
func loadConfig(args []string, lookupEnv func(string) (string, bool)) (*config, error) {
	c, fs, err := newFlagSet("topohub", "topohub [flags] | topohub token [flags]", lookupEnv)
	if err != nil {
		return nil, err
	}
	fs.BoolVar(&c.ShowVersion, "version", false, "print the build (version, commit, Go) and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with -; the only command is token)", fs.Arg(0))
	}
	return c, c.check()
}

// newFlagSet binds every setting of a fresh config to a flag set named
// name, after filling it from the defaults and the environment.
func newFlagSet(name, usage string, lookupEnv func(string) (string, bool)) (*config, *flag.FlagSet, error) {
	c := &config{}
	defs := flagDefs(c)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s\n\nEvery setting can also be set with its environment variable.\n\n", usage)
		for _, d := range defs {
			fmt.Fprintf(fs.Output(), "  -%s (%s, default %q)\n    \t%s\n", d.name, d.env, d.def, d.usage)
		}
		fmt.Fprintf(fs.Output(), "\nOther flags:\n")
		fs.VisitAll(func(f *flag.Flag) {
			for _, d := range defs {
				if d.name == f.Name {
					return
				}
			}
			fmt.Fprintf(fs.Output(), "  -%s\n    \t%s\n", f.Name, f.Usage)
		})
	}
	for _, d := range defs {
		v := d.def
		if e, ok := lookupEnv(d.env); ok {
			v = e
		}
		if err := d.set(v); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", d.env, err)
		}
		if d.def == "false" || d.def == "true" {
			fs.BoolFunc(d.name, d.usage, d.set) // -demo alone means -demo=true
		} else {
			fs.Func(d.name, d.usage, d.set)
		}
	}
	return c, fs, nil
}

// check validates what the flag parsers cannot.
func (c *config) check() error {
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return errors.New("TOPOHUB_LOG_FORMAT: want text or json")
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return err
	}
	return nil
}

// parseLogLevel reads TOPOHUB_LOG_LEVEL.
func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("TOPOHUB_LOG_LEVEL: want debug, info, warn or error, got %q", s)
	}
	return l, nil
}
