// Package testwait is the tests' one way to wait for a condition: poll it
// until it holds or a deadline passes, never sleep a fixed time.
package testwait

import (
	"testing"
	"time"
)

// pollInterval is how often For looks at the condition.
const pollInterval = 5 * time.Millisecond

// For polls cond until it holds, failing tb after d with what it waited for.
func For(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(pollInterval)
	}
}
