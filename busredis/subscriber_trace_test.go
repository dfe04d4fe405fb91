package busredis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"topohub/hub"
)

// TestSubscriptionSpans: each (re)subscription is one span, ended when
// every pattern is confirmed; a subscription lost to CLIENT KILL makes a
// second.
func TestSubscriptionSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	sub := NewSubscriber(pkgRedis.Options(), &sink{}, SubscriberConfig{Families: hub.DefaultFamilies(), Logger: quietLog, TracerProvider: tp})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sub.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, 10*time.Second, "subscription", sub.Ready)
	if err := pkgRedis.Client(t).Do(context.Background(), "client", "kill", "type", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "resubscription", func() bool { return sub.Established() == 2 })
	ok := 0
	for _, sp := range exp.GetSpans() {
		if sp.Name == "redis.psubscribe" && sp.Status.Code != codes.Error {
			ok++
		}
	}
	if ok != 2 {
		t.Fatalf("%d confirmed redis.psubscribe spans, want 2: %+v", ok, exp.GetSpans())
	}
}

func TestProblem(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("dial: %w", syscall.ECONNREFUSED):                       "connection refused",
		errors.New("WRONGPASS invalid username-password pair"):             "authentication failed",
		errors.New("tls: first record does not look like a TLS handshake"): "TLS mismatch",
		errors.New("something else"):                                       "error",
	} {
		if got := Problem(err); got != want {
			t.Errorf("Problem(%v) = %q, want %q", err, got, want)
		}
	}
	if got := RedactPassword("redis://u:pw1@h", "pw1"); got != "redis://u:***@h" {
		t.Errorf("RedactPassword: %q", got)
	}
}
