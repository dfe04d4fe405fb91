package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/golang-jwt/jwt/v5"

	"topohub/hub"
)

// MinSecretLen is the shortest HS256 secret accepted.
const MinSecretLen = 32

// DefaultMaxSession is AuthConfig.MaxSession's default.
const DefaultMaxSession = 24 * time.Hour

// AuthConfig configures token verification (docs/protocol.md §5).
type AuthConfig struct {
	// Secret is the HS256 key; at least MinSecretLen bytes. Required.
	Secret []byte
	// Issuer required in "iss". Zero value means no check; cmd/topohub
	// defaults it to "decnet".
	Issuer string
	// Audience that "aud" (a string or an array) must contain. Zero value
	// means no check; cmd/topohub defaults it to "decnet-dashboard".
	Audience string
	// Type required in "typ". Zero value means no check; cmd/topohub
	// defaults it to "access".
	Type string
	// RoleClaim names the claim holding the role. Zero value means "role".
	RoleClaim string
	// Roles allowed to open streams. Zero value means viewer and admin.
	Roles []string
	// MaxSession caps a session's length whatever the token's exp: a
	// session opened (or refreshed) with a token or ticket ends at the
	// token's exp or MaxSession after the credential was presented,
	// whichever is first; a ticket carries that end. Zero value means
	// 24h.
	MaxSession time.Duration
	// AllowQueryToken accepts a raw JWT in ?token= (legacy clients).
	// Zero value means refused: a token in a URL ends up in proxy logs.
	AllowQueryToken bool
}

// Principal is the authenticated caller (an alias of hub.Principal).
type Principal = hub.Principal

// An AuthError is a refused credential with its HTTP status (401 or 403).
// Message is safe to show to the caller and to log: it never holds the
// credential.
type AuthError struct {
	Status  int
	Message string
	err     error // what it wraps, if anything (ErrTicketInvalid)
}

func (e *AuthError) Error() string { return e.Message }

func (e *AuthError) Unwrap() error { return e.err }

func unauthorized(format string, args ...any) *AuthError {
	return &AuthError{Status: http.StatusUnauthorized, Message: fmt.Sprintf(format, args...)}
}

// Authenticator verifies JWTs and redeems tickets.
type Authenticator struct {
	cfg         AuthConfig
	parser      *jwt.Parser
	tickets     TicketStore
	revocations hub.RevocationList // nil: no revocation checks
	resumeKey   []byte             // MAC key of SSE resume cookies
	metrics     *serverMetrics     // nil: not counted
}

// TicketStore is hub.TicketStore; busredis.Tickets implements it.
type TicketStore = hub.TicketStore

// ErrTicketInvalid is hub.ErrTicketInvalid.
var ErrTicketInvalid = hub.ErrTicketInvalid

// NewAuthenticator checks cfg and builds the verifier. tickets may be nil
// (then ?ticket= is refused).
func NewAuthenticator(cfg AuthConfig, tickets TicketStore) (*Authenticator, error) {
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("jwt secret is %d bytes; at least %d are required", len(cfg.Secret), MinSecretLen)
	}
	if cfg.RoleClaim == "" {
		cfg.RoleClaim = "role"
	}
	if len(cfg.Roles) == 0 {
		cfg.Roles = []string{"viewer", "admin"}
	}
	if cfg.MaxSession <= 0 {
		cfg.MaxSession = DefaultMaxSession
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	return &Authenticator{cfg: cfg, parser: jwt.NewParser(opts...), tickets: tickets, resumeKey: resumeKeyFor(cfg.Secret)}, nil
}

// tokenClaims are the claims topohub reads, decoded into a struct rather
// than a map (a handshake's largest decoding cost). Claims whose type the
// contract does not fix are kept raw and read as strings when they are
// strings, as a map would be read.
type tokenClaims struct {
	jwt.RegisteredClaims
	UUID json.RawMessage `json:"uuid"`
	Typ  json.RawMessage `json:"typ"`
	Role json.RawMessage `json:"role"`
}

// rawString is raw's value when it is a JSON string, else "".
func rawString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// VerifyToken checks a JWT and the role it carries.
func (a *Authenticator) VerifyToken(raw string) (Principal, error) {
	var typ, user, role, jti, sub string
	var exp *jwt.NumericDate
	keyFunc := func(*jwt.Token) (any, error) { return a.cfg.Secret, nil }
	var tok *jwt.Token
	var err error
	if a.cfg.RoleClaim == "role" {
		var c tokenClaims
		if tok, err = a.parser.ParseWithClaims(raw, &c, keyFunc); err != nil {
			return Principal{}, unauthorized("invalid token: %s", tokenProblem(err))
		}
		typ, user, role, jti, sub, exp = rawString(c.Typ), rawString(c.UUID), rawString(c.Role), c.ID, c.Subject, c.ExpiresAt
	} else {
		claims := jwt.MapClaims{}
		if tok, err = a.parser.ParseWithClaims(raw, claims, keyFunc); err != nil {
			return Principal{}, unauthorized("invalid token: %s", tokenProblem(err))
		}
		typ, _ = claims["typ"].(string)
		user, _ = claims["uuid"].(string)
		role, _ = claims[a.cfg.RoleClaim].(string)
		jti, _ = claims["jti"].(string)
		sub, _ = claims["sub"].(string)
		exp, _ = claims.GetExpirationTime()
	}
	if _, ok := tok.Header["crit"]; ok {
		// RFC 7515 §4.1.11: a recipient must refuse a token whose crit
		// lists an extension it does not understand, and topohub
		// understands none.
		return Principal{}, unauthorized("invalid token: unsupported crit header")
	}
	if a.cfg.Type != "" && typ != a.cfg.Type {
		return Principal{}, unauthorized("invalid token: typ is not %q", a.cfg.Type)
	}
	if user == "" {
		user = sub
	}
	if user == "" {
		return Principal{}, unauthorized("invalid token: no uuid or sub claim")
	}
	p := Principal{User: user, Role: role, JTI: jti}
	if exp != nil {
		p.Expires = exp.Time
	}
	p.Expires = a.capSession(p.Expires, time.Now())
	if err := a.checkRole(p); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// capSession returns the end of a session opened at now whose credential
// expires at exp (zero: never): the earlier of exp and now+MaxSession.
func (a *Authenticator) capSession(exp, now time.Time) time.Time {
	limit := now.Add(a.cfg.MaxSession)
	if exp.IsZero() || exp.After(limit) {
		return limit
	}
	return exp
}

func (a *Authenticator) checkRole(p Principal) error {
	if !slices.Contains(a.cfg.Roles, p.Role) {
		return &AuthError{Status: http.StatusForbidden, Message: "role not allowed to stream"}
	}
	return nil
}

// tokenProblem names what is wrong with a token without echoing it.
func tokenProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad signature or algorithm"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "required claim missing"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	}
	return "rejected"
}

// Authenticate reads the request's credential: an Authorization Bearer
// header, a ?ticket=, or (only when enabled) a ?token=. ctx bounds the
// Redis calls (ticket, revocation).
func (a *Authenticator) Authenticate(ctx context.Context, c *gin.Context) (Principal, error) {
	if h := c.GetHeader("Authorization"); h != "" {
		tok, err := bearerToken(h)
		if err != nil {
			return Principal{}, err
		}
		return a.verifyUnrevoked(ctx, tok)
	}
	if t := c.Query("ticket"); t != "" {
		return a.RedeemTicket(ctx, t)
	}
	if t := c.Query("token"); t != "" {
		if !a.cfg.AllowQueryToken {
			return Principal{}, unauthorized("tokens in the query string are refused; mint a ticket with POST /auth/sse-ticket")
		}
		return a.verifyUnrevoked(ctx, t)
	}
	return Principal{}, unauthorized("missing credentials: send Authorization: Bearer <token> or ?ticket=")
}

// bearerToken reads the token of an Authorization header.
func bearerToken(header string) (string, error) {
	scheme, tok, ok := strings.Cut(header, " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", unauthorized("authorization header must be \"Bearer <token>\"")
	}
	return tok, nil
}

// verifyUnrevoked is VerifyToken then CheckRevoked.
func (a *Authenticator) verifyUnrevoked(ctx context.Context, raw string) (Principal, error) {
	p, err := a.VerifyToken(raw)
	if err != nil {
		return Principal{}, err
	}
	if err := a.CheckRevoked(ctx, p); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// CheckRevoked refuses (401) a principal whose token id is on the
// revocation list. VerifyToken does not consult the list; every other
// method of the Authenticator that accepts a credential does. An error
// that is not an *AuthError is the list failing.
func (a *Authenticator) CheckRevoked(ctx context.Context, p Principal) error {
	if a.revocations == nil || p.JTI == "" {
		return nil
	}
	revoked, err := a.revocations.Revoked(ctx, p.JTI)
	if err != nil {
		return fmt.Errorf("revocation check: %w", err)
	}
	if revoked {
		return unauthorized("token revoked")
	}
	return nil
}

// RedeemTicket consumes a ticket and re-checks the session it carries:
// its exp, its role and the revocation of the token it was minted from.
func (a *Authenticator) RedeemTicket(ctx context.Context, ticket string) (Principal, error) {
	p, err := a.redeemTicket(ctx, ticket)
	if m := a.metrics; m != nil {
		switch {
		case err == nil:
			m.ticketsRedeem.Inc()
		case errors.Is(err, ErrTicketInvalid):
			m.ticketsRefuse.WithLabelValues("invalid").Inc()
		case isAuthError(err):
			m.ticketsRefuse.WithLabelValues("credentials").Inc()
		default:
			m.ticketsRefuse.WithLabelValues("unavailable").Inc()
		}
	}
	return p, err
}

func (a *Authenticator) redeemTicket(ctx context.Context, ticket string) (Principal, error) {
	if a.tickets == nil {
		return Principal{}, unauthorized("tickets are not enabled")
	}
	p, err := a.tickets.Redeem(ctx, ticket)
	if err != nil {
		if errors.Is(err, ErrTicketInvalid) {
			return Principal{}, errTicketSpent
		}
		return Principal{}, err
	}
	now := time.Now()
	if !p.Expires.IsZero() && !now.Before(p.Expires) {
		return Principal{}, unauthorized("the session this ticket was minted from has expired")
	}
	p.Expires = a.capSession(p.Expires, now)
	if err := a.checkRole(p); err != nil {
		return Principal{}, err
	}
	if err := a.CheckRevoked(ctx, p); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// errTicketSpent is the refusal of a ticket that is unknown, expired or
// used (one value, so the SSE route can tell it from other refusals and
// try the resume cookie).
var errTicketSpent = &AuthError{Status: http.StatusUnauthorized, Message: ErrTicketInvalid.Error(), err: ErrTicketInvalid}

// isAuthError tells a refused credential from a store that failed.
func isAuthError(err error) bool {
	var ae *AuthError
	return errors.As(err, &ae)
}

// abortAuth answers a refused credential.
func abortAuth(c *gin.Context, err error) {
	var ae *AuthError
	if errors.As(err, &ae) {
		if ae.Status == http.StatusUnauthorized {
			c.Header("WWW-Authenticate", `Bearer realm="topohub"`)
		}
		abortJSON(c, ae.Status, ae.Message)
		return
	}
	abortUnavailable(c, "credential store unavailable")
}

func abortJSON(c *gin.Context, status int, msg string) {
	c.AbortWithStatusJSON(status, gin.H{"error": msg})
}

// retryUnavailable is the Retry-After of a 503: Redis slow or down, or the
// hub shutting down (a load balancer sends the retry elsewhere).
const retryUnavailable = "1"

// abortUnavailable answers 503 with Retry-After.
func abortUnavailable(c *gin.Context, msg string) {
	c.Header("Retry-After", retryUnavailable)
	abortJSON(c, http.StatusServiceUnavailable, msg)
}

// abortTooMany answers 429 with Retry-After: after, rounded up to whole
// seconds, at least 1.
func abortTooMany(c *gin.Context, after time.Duration, msg string) {
	secs := max(int64((after+time.Second-1)/time.Second), 1)
	c.Header("Retry-After", strconv.FormatInt(secs, 10))
	abortJSON(c, http.StatusTooManyRequests, msg)
}
