package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// credentials hands each client the bearer token it connects with.
type credentials struct {
	cfg *config
	now time.Time
}

// tokenFor returns client i's token: the --token for everyone, or an
// HS256 token minted for user bench-<run>-u<i>, since the hub caps the
// streams of one user (default 5).
func (c credentials) tokenFor(i int) (string, error) {
	if c.cfg.Token != "" {
		return c.cfg.Token, nil
	}
	user := fmt.Sprintf("bench-%s-u%d", c.cfg.RunID, i)
	claims := jwt.MapClaims{
		"uuid": user,
		"sub":  user,
		"iat":  c.now.Unix(),
		"exp":  c.now.Add(c.cfg.TokenTTL).Unix(),
	}
	if c.cfg.Issuer != "" {
		claims["iss"] = c.cfg.Issuer
	}
	if c.cfg.Audience != "" {
		claims["aud"] = c.cfg.Audience
	}
	if c.cfg.Type != "" {
		claims["typ"] = c.cfg.Type
	}
	claims[c.cfg.RoleClaim] = c.cfg.Role
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(c.cfg.Secret))
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
