package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"topohub/handlers"
)

// tokenUsage is the usage line of the token command.
const tokenUsage = "topohub token -user U [-role viewer] [-ttl 1h] [settings]"

// runToken is `topohub token`: it prints one HS256 token signed with the
// configured secret and carrying the claims the hub verifies (iss, aud,
// typ and the role claim from the same settings), so an operator can try
// a deployment without a platform to log in to. The settings are read
// exactly as the hub reads them, from TOPOHUB_* variables and flags.
func runToken(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) error {
	c, fs, err := newFlagSet("topohub token", tokenUsage, lookupEnv)
	if err != nil {
		return err
	}
	fs.SetOutput(stderr)
	user := fs.String("user", "", "the user (claims sub and uuid); required")
	role := fs.String("role", "viewer", "the role (in the TOPOHUB_ROLE_CLAIM claim)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid (claim exp)")
	jti := fs.String("jti", "", "token id, for TOPOHUB_REVOKED_SET (default: random)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token: unexpected argument %q", fs.Arg(0))
	}
	if *user == "" {
		return errors.New("token: -user is required")
	}
	if *ttl <= 0 {
		return errors.New("token: -ttl must be positive")
	}
	if len(c.JWTSecret) < handlers.MinSecretLen {
		return fmt.Errorf("token: TOPOHUB_JWT_SECRET (or -jwt-secret) must be the hub's secret, at least %d bytes", handlers.MinSecretLen)
	}
	if !slices.Contains(c.StreamRoles, *role) {
		fmt.Fprintf(stderr, "topohub token: role %q may not stream (TOPOHUB_STREAM_ROLES is %v): the hub will answer 403\n", *role, c.StreamRoles)
	}
	if *jti == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		*jti = hex.EncodeToString(b)
	}
	tok, err := signToken(c, *user, *role, *jti, time.Now(), *ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

// signToken makes the token the hub configured by c accepts: the claims
// README "Tokens" lists.
func signToken(c *config, user, role, jti string, now time.Time, ttl time.Duration) (string, error) {
	claims := jwt.MapClaims{
		"sub":  user,
		"uuid": user,
		"iat":  now.Unix(),
		"exp":  now.Add(ttl).Unix(),
	}
	if jti != "" {
		claims["jti"] = jti
	}
	if c.JWTIssuer != "" {
		claims["iss"] = c.JWTIssuer
	}
	if c.JWTAudience != "" {
		claims["aud"] = c.JWTAudience
	}
	if c.JWTType != "" {
		claims["typ"] = c.JWTType
	}
	claims[c.RoleClaim] = role
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(c.JWTSecret))
}
