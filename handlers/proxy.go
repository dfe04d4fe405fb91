package handlers

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// trustedProxies is Config.TrustedProxies parsed: the peers whose
// forwarding headers (X-Forwarded-For, X-Forwarded-Host,
// X-Forwarded-Proto, Forwarded) are believed. Empty trusts nobody.
type trustedProxies []netip.Prefix

// parseTrustedProxies reads CIDRs ("10.0.0.0/8") or single addresses
// ("127.0.0.1"), so a typo fails at start-up instead of silently trusting
// nobody (or everybody).
func parseTrustedProxies(list []string) (trustedProxies, error) {
	var out trustedProxies
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR", s)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// strings returns the list in the form gin's SetTrustedProxies takes.
func (tp trustedProxies) strings() []string {
	out := make([]string, len(tp))
	for i, p := range tp {
		out[i] = p.String()
	}
	return out
}

// trusts reports whether the request's direct peer is a trusted proxy.
func (tp trustedProxies) trusts(r *http.Request) bool {
	if len(tp) == 0 {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range tp {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// publicHost is the host (with port, as in a Host header) and scheme the
// browser used: from a trusted proxy, its X-Forwarded-Host and
// X-Forwarded-Proto, or else the host= and proto= of its Forwarded
// header; otherwise, and for what the proxy did not say, the request's
// own Host and whether it came over TLS. A proxy must overwrite these
// headers, not append to them: of a list, the first value (the one the
// client-facing proxy wrote when it appended) is taken.
func (tp trustedProxies) publicHost(r *http.Request) (host, scheme string) {
	host, scheme = r.Host, "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if !tp.trusts(r) {
		return host, scheme
	}
	fwd := parseForwarded(r.Header.Get("Forwarded"))
	if h := firstValue(r.Header.Get("X-Forwarded-Host")); h != "" {
		host = h
	} else if h := fwd["host"]; h != "" {
		host = h
	}
	if p := strings.ToLower(firstValue(r.Header.Get("X-Forwarded-Proto"))); p == "http" || p == "https" {
		scheme = p
	} else if p := strings.ToLower(fwd["proto"]); p == "http" || p == "https" {
		scheme = p
	}
	return host, scheme
}

// forwardedFor is the client address of a trusted proxy's Forwarded
// header (for=), used when it sends neither X-Forwarded-For nor
// X-Real-IP, which gin reads; "" when there is none.
func (tp trustedProxies) forwardedFor(r *http.Request) string {
	if !tp.trusts(r) || r.Header.Get("X-Forwarded-For") != "" || r.Header.Get("X-Real-IP") != "" {
		return ""
	}
	v := parseForwarded(r.Header.Get("Forwarded"))["for"]
	if v == "" {
		return ""
	}
	// for="[2001:db8::1]:4711" or for=192.0.2.60:4711 or for=192.0.2.60
	if h, _, err := net.SplitHostPort(v); err == nil {
		v = h
	}
	v = strings.Trim(v, "[]")
	if a, err := netip.ParseAddr(v); err == nil {
		return a.String()
	}
	return ""
}

func firstValue(h string) string {
	v, _, _ := strings.Cut(h, ",")
	return strings.TrimSpace(v)
}

// parseForwarded reads the first element of an RFC 7239 Forwarded header
// (the one the client-facing proxy wrote) into lower-cased keys.
func parseForwarded(h string) map[string]string {
	if h == "" {
		return nil
	}
	elem, _, _ := strings.Cut(h, ",")
	out := map[string]string{}
	for _, pair := range strings.Split(elem, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			continue
		}
		out[strings.ToLower(strings.TrimSpace(k))] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return out
}
