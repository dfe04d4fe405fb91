package handlers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// ResumeCookie is the name of the SSE resume cookie: set on every SSE
// response, HttpOnly, its Path the stream's own, so a native EventSource
// that reconnects by itself (with its spent ?ticket= and Last-Event-ID)
// is let back in until the session's end.
const ResumeCookie = "topohub_resume"

// resumeVersion prefixes a cookie value and is bound into its MAC.
const resumeVersion = "v1"

// resumeClaims is what a resume cookie carries: the session of the
// stream it was set on, bound to that stream's topology.
type resumeClaims struct {
	User     string `json:"u"`
	Role     string `json:"r"`
	JTI      string `json:"j,omitempty"`
	Topology string `json:"t"`
	Expires  int64  `json:"x"` // unix seconds: the session's end
}

// errResume is every refused resume cookie: which check failed is not
// the client's business (and a cookie is never echoed or logged).
var errResume = errors.New("resume cookie invalid")

// resumeKeyFor derives the cookie's MAC key from the JWT secret, so that
// no instance needs state or another secret, and a cookie can never pass
// for a token or the other way round.
func resumeKeyFor(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("topohub resume cookie " + resumeVersion))
	return m.Sum(nil)
}

// mintResume returns the cookie value for p's session on topology:
// v1.<base64url JSON claims>.<base64url HMAC-SHA256>.
func (a *Authenticator) mintResume(p Principal, topology string) string {
	b, _ := json.Marshal(resumeClaims{User: p.User, Role: p.Role, JTI: p.JTI, Topology: topology, Expires: p.Expires.Unix()})
	body := resumeVersion + "." + base64.RawURLEncoding.EncodeToString(b)
	return body + "." + base64.RawURLEncoding.EncodeToString(a.resumeMAC(body))
}

func (a *Authenticator) resumeMAC(body string) []byte {
	m := hmac.New(sha256.New, a.resumeKey)
	m.Write([]byte(body))
	return m.Sum(nil)
}

// verifyResume checks a cookie value for topology at now: its MAC, its
// topology, its end; then, as for any credential, the role and the
// revocation of the token the session came from. The session keeps its
// end: a resume never extends it.
func (a *Authenticator) verifyResume(ctx context.Context, value, topology string, now time.Time) (Principal, error) {
	parts := strings.Split(value, ".")
	if len(parts) != 3 || parts[0] != resumeVersion {
		return Principal{}, errResume
	}
	mac, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(mac, a.resumeMAC(parts[0]+"."+parts[1])) {
		return Principal{}, errResume
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Principal{}, errResume
	}
	var rc resumeClaims
	if json.Unmarshal(raw, &rc) != nil || rc.User == "" || rc.Topology != topology {
		return Principal{}, errResume
	}
	exp := time.Unix(rc.Expires, 0)
	if !now.Before(exp) {
		return Principal{}, errResume
	}
	p := Principal{User: rc.User, Role: rc.Role, JTI: rc.JTI, Expires: exp}
	if err := a.checkRole(p); err != nil {
		return Principal{}, err
	}
	if err := a.CheckRevoked(ctx, p); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// authenticateSSE is Authenticate for the SSE route of topology: when the
// request carries no credential, or only a ?ticket= that is unknown or
// spent (a native EventSource reconnecting with its original URL), a
// valid resume cookie for this topology opens the stream instead. A
// Bearer header or a query token is never replaced by the cookie: a
// caller who names credentials gets exactly their verdict.
func (a *Authenticator) authenticateSSE(ctx context.Context, c *gin.Context, topology string) (Principal, error) {
	p, err := a.Authenticate(ctx, c)
	if err == nil || c.GetHeader("Authorization") != "" || c.Query("token") != "" {
		return p, err
	}
	var ae *AuthError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		return p, err // a store failure, or a 403, stands
	}
	if c.Query("ticket") != "" && !errors.Is(err, errTicketSpent) {
		return p, err
	}
	ck, cerr := c.Request.Cookie(ResumeCookie)
	if cerr != nil || ck.Value == "" {
		return p, err
	}
	rp, rerr := a.verifyResume(ctx, ck.Value, topology, time.Now())
	if rerr != nil {
		if errors.Is(rerr, errResume) {
			return Principal{}, unauthorized("ticket spent and resume cookie invalid or expired; mint a new ticket")
		}
		return Principal{}, rerr
	}
	return rp, nil
}

// setResumeCookie puts the stream's resume cookie in the response's
// headers (written with the SSE head). It is scoped to the path the
// request came on (the browser reconnects to exactly that URL), expires
// with the session, is HttpOnly, and Secure (then SameSite=None, so a
// dashboard on another site may send it with withCredentials) when the
// public scheme is https; over plain http it is SameSite=Lax.
func (s *Server) setResumeCookie(c *gin.Context, p Principal, topology string) {
	ck := &http.Cookie{
		Name:     ResumeCookie,
		Value:    s.auth.mintResume(p, topology),
		Path:     c.Request.URL.EscapedPath(),
		Expires:  p.Expires.UTC(),
		MaxAge:   max(int(time.Until(p.Expires)/time.Second), 1),
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	}
	if _, scheme := s.proxies.publicHost(c.Request); scheme == "https" {
		ck.Secure, ck.SameSite = true, http.SameSiteNoneMode
	}
	if ck.Valid() != nil {
		// A path byte a cookie cannot carry (';' is a legal topology id
		// byte): scope it to every stream instead; the topology is bound
		// inside the value anyway.
		ck.Path = s.cfg.BasePath + "/topologies/"
	}
	c.Writer.Header().Add("Set-Cookie", ck.String())
}
