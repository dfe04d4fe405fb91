package handlers

import (
	"strconv"
	"strings"
)

// A credential put in a URL path by mistake (a JWT or a ticket where the
// topology id goes) must not reach the access log or an error body. The
// hub cannot tell a credential from an id in general, so it redacts what
// looks like one: a path segment longer than maxPlainSegment bytes, a
// JWT's shape (three base64url parts separated by dots, or a segment
// starting with "eyJ", the encoding of `{"`, that is not short), or a
// ticket's (ticketLen base64url characters).
const (
	maxPlainSegment = 64
	ticketLen       = 43 // busredis tickets: 32 bytes, unpadded base64url
	redacted        = "[redacted]"
)

// redactSegment returns seg, or redacted when it may be a credential.
func redactSegment(seg string) string {
	if len(seg) > maxPlainSegment || jwtShaped(seg) || (len(seg) >= 16 && strings.HasPrefix(seg, "eyJ")) ||
		(len(seg) == ticketLen && base64URL(seg)) {
		return redacted
	}
	return seg
}

func base64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// jwtShaped reports whether s is three non-empty base64url parts joined by
// dots (the signature part may be empty, as in alg "none").
func jwtShaped(s string) bool {
	parts := 0
	n := 0 // length of the current part
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			if n == 0 {
				return false
			}
			parts++
			n = 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '=':
			n++
		default:
			return false
		}
	}
	return parts == 2
}

// redactPath redacts each segment of an URL path that may be a
// credential. A path with none is returned as it is, without allocating.
func redactPath(p string) string {
	clean := true
	for seg := range strings.SplitSeq(p, "/") {
		if redactSegment(seg) != seg {
			clean = false
			break
		}
	}
	if clean {
		return p
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		segs[i] = redactSegment(seg)
	}
	return strings.Join(segs, "/")
}

// redactIn removes seg from msg when seg may be a credential.
func redactIn(msg, seg string) string {
	r := redactSegment(seg)
	if r == seg || seg == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, strconv.Quote(seg), strconv.Quote(r))
	return strings.ReplaceAll(msg, seg, r)
}
