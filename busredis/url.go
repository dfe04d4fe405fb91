package busredis

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Shape is how a Redis deployment is laid out.
type Shape int

const (
	// ShapeSingle is one server (redis://, rediss://).
	ShapeSingle Shape = iota
	// ShapeSentinel is a primary found through Sentinel
	// (redis+sentinel://, rediss+sentinel://).
	ShapeSentinel
	// ShapeCluster is a Redis Cluster (redis+cluster://, rediss+cluster://).
	ShapeCluster
)

func (s Shape) String() string {
	switch s {
	case ShapeSentinel:
		return "sentinel"
	case ShapeCluster:
		return "cluster"
	default:
		return "single"
	}
}

// A Target is a parsed TOPOHUB_REDIS_URL: exactly one of Single,
// Sentinel and Cluster is set, according to Shape.
type Target struct {
	Shape    Shape
	Single   *redis.Options
	Sentinel *redis.FailoverOptions
	Cluster  *redis.ClusterOptions
}

// SingleTarget wraps the options of one server.
func SingleTarget(o *redis.Options) *Target { return &Target{Shape: ShapeSingle, Single: o} }

// NewClient returns the ordinary client of the target: a plain client,
// go-redis's failover client (Sentinel) or its cluster client.
func (t *Target) NewClient() redis.UniversalClient {
	switch t.Shape {
	case ShapeSentinel:
		return redis.NewFailoverClient(t.Sentinel)
	case ShapeCluster:
		return redis.NewClusterClient(t.Cluster)
	default:
		return redis.NewClient(t.Single)
	}
}

// Addrs lists the addresses the URL names (the server, the sentinels or
// the cluster's seed nodes), for logs: they carry no credentials.
func (t *Target) Addrs() []string {
	switch t.Shape {
	case ShapeSentinel:
		return t.Sentinel.SentinelAddrs
	case ShapeCluster:
		return t.Cluster.Addrs
	default:
		return []string{t.Single.Addr}
	}
}

// Passwords returns the non-empty passwords of the target (the servers',
// and on Sentinel the sentinels'), for masking in error texts.
func (t *Target) Passwords() []string {
	var ps []string
	add := func(p string) {
		if p != "" {
			ps = append(ps, p)
		}
	}
	switch t.Shape {
	case ShapeSentinel:
		add(t.Sentinel.Password)
		add(t.Sentinel.SentinelPassword)
	case ShapeCluster:
		add(t.Cluster.Password)
	default:
		add(t.Single.Password)
	}
	// Longest first, so that masking one never leaves part of another.
	slices.SortFunc(ps, func(a, b string) int { return len(b) - len(a) })
	return ps
}

// TLS reports whether the target is reached over TLS.
func (t *Target) TLS() bool {
	switch t.Shape {
	case ShapeSentinel:
		return t.Sentinel.TLSConfig != nil
	case ShapeCluster:
		return t.Cluster.TLSConfig != nil
	default:
		return t.Single.TLSConfig != nil
	}
}

// ErrBadURL is wrapped by every error of ParseURL. The messages never
// quote the URL, since it may hold a password.
var ErrBadURL = errors.New("invalid Redis URL")

// ParseURL reads a Redis URL in the forms Centrifugo's users know:
//
//	redis://[[user]:password@]host:port[/db]          one server
//	rediss://...                                       the same over TLS
//	redis+sentinel://[[user]:password@]host:port[/db]?sentinel_master_name=NAME&addr=host2:port2&sentinel_password=P
//	rediss+sentinel://...                              TLS to the sentinels and the servers
//	redis+cluster://[[user]:password@]host:port?addr=host2:port2
//	rediss+cluster://...
//
// For Sentinel, user and password are the servers' credentials;
// sentinel_user and sentinel_password those of the sentinels (default:
// none). Further sentinels or seed nodes come as repeated addr
// parameters. caFile, when not empty, is a PEM file of the CAs that a
// TLS server's certificate must chain to (default: the system's). An
// unknown parameter is an error.
func ParseURL(raw, caFile string) (*Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the URL, and with it the password.
		return nil, fmt.Errorf("%w: not a URL", ErrBadURL)
	}
	base, ok := strings.CutSuffix(u.Scheme, "+sentinel")
	shape := ShapeSentinel
	if !ok {
		if base, ok = strings.CutSuffix(u.Scheme, "+cluster"); ok {
			shape = ShapeCluster
		} else {
			shape = ShapeSingle
		}
	}
	if base != "redis" && base != "rediss" {
		return nil, fmt.Errorf("%w: scheme %q, want redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster", ErrBadURL, u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return nil, fmt.Errorf("%w: no host", ErrBadURL)
	}
	if port == "" {
		port = "6379"
		if shape == ShapeSentinel {
			port = "26379"
		}
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("%w: port %q", ErrBadURL, port)
	}
	addrs := []string{net.JoinHostPort(host, port)}
	user := u.User.Username()
	pass, _ := u.User.Password()

	var tlsCfg *tls.Config
	if base == "rediss" {
		tlsCfg = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, fmt.Errorf("TOPOHUB_REDIS_TLS_CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("TOPOHUB_REDIS_TLS_CA: no PEM certificate in %s", caFile)
			}
			tlsCfg.RootCAs = pool
		}
	} else if caFile != "" {
		return nil, fmt.Errorf("%w: TOPOHUB_REDIS_TLS_CA is set but the scheme %q is not TLS (use rediss)", ErrBadURL, u.Scheme)
	}

	db := 0
	if p := strings.Trim(u.Path, "/"); p != "" {
		if shape == ShapeCluster {
			return nil, fmt.Errorf("%w: a cluster has only database 0; drop the path", ErrBadURL)
		}
		if db, err = strconv.Atoi(p); err != nil || db < 0 {
			return nil, fmt.Errorf("%w: database %q is not a number", ErrBadURL, p)
		}
	}

	q := u.Query()
	take := func(k string) string {
		v := q.Get(k)
		q.Del(k)
		return v
	}
	for _, a := range q["addr"] {
		h, p, err := net.SplitHostPort(a)
		if err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("%w: addr %q, want host:port", ErrBadURL, a)
		}
		addrs = append(addrs, net.JoinHostPort(h, p))
	}
	q.Del("addr")
	var master, sentUser, sentPass string
	if shape == ShapeSentinel {
		master = take("sentinel_master_name")
		sentUser = take("sentinel_user")
		sentPass = take("sentinel_password")
		if master == "" {
			return nil, fmt.Errorf("%w: sentinel_master_name is required", ErrBadURL)
		}
	} else if shape == ShapeSingle && len(addrs) > 1 {
		return nil, fmt.Errorf("%w: addr names more servers, which only redis+sentinel and redis+cluster take", ErrBadURL)
	}
	for k := range q {
		return nil, fmt.Errorf("%w: unknown parameter %q", ErrBadURL, k)
	}

	switch shape {
	case ShapeSentinel:
		return &Target{Shape: shape, Sentinel: &redis.FailoverOptions{
			MasterName: master, SentinelAddrs: addrs,
			SentinelUsername: sentUser, SentinelPassword: sentPass,
			Username: user, Password: pass, DB: db, TLSConfig: tlsCfg,
		}}, nil
	case ShapeCluster:
		return &Target{Shape: shape, Cluster: &redis.ClusterOptions{
			Addrs: addrs, Username: user, Password: pass, TLSConfig: tlsCfg,
		}}, nil
	default:
		return &Target{Shape: shape, Single: &redis.Options{
			Addr: addrs[0], Username: user, Password: pass, DB: db, TLSConfig: tlsCfg,
		}}, nil
	}
}
