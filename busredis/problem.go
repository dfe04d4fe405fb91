package busredis

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"syscall"
)

// ProblemTLS is Problem for a connection made with TLS (rediss://): a
// plain Redis never answers the TLS handshake, so its timeout or close
// says TLS mismatch.
func ProblemTLS(err error, withTLS bool) string {
	p := Problem(err)
	if withTLS && (p == "timeout" || strings.HasPrefix(p, "closed by server")) {
		return "TLS mismatch? (no answer to the TLS handshake: is the server plain redis://?)"
	}
	return p
}

// Problem names, for an operator, what is wrong with a Redis connection:
// "connection refused", "TLS mismatch", "authentication failed",
// "timeout", "host not found", "closed by server" or "error". The
// hub logs it beside the error, whose text never holds the password
// (RedactPassword makes sure).
func Problem(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	var dnsErr *net.DNSError
	var recErr tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &recErr), errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr),
		strings.Contains(msg, "tls:"), strings.Contains(msg, "x509:"):
		// A plain Redis given rediss:// answers the ClientHello with
		// "-ERR Protocol error", which is not a TLS record.
		return "TLS mismatch"
	case strings.HasPrefix(msg, "WRONGPASS"), strings.HasPrefix(msg, "NOAUTH"), strings.Contains(msg, "invalid password"),
		strings.Contains(msg, "AUTH <password> called without"), strings.Contains(msg, "invalid username-password"):
		return "authentication failed"
	case errors.As(err, &dnsErr):
		return "host not found"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), strings.Contains(msg, "EOF"):
		return "closed by server (TLS expected, or protocol mismatch?)"
	}
	return "error"
}

// RedactPassword replaces password in s, should a library ever quote it.
func RedactPassword(s, password string) string {
	if password == "" {
		return s
	}
	return strings.ReplaceAll(s, password, "***")
}
