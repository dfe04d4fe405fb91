package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

func TestTracingOffUnlessEndpointSet(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	global := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(global) })
	tp, stop, err := startTracing(lookup(nil), log)
	if err != nil {
		t.Fatal(err)
	}
	stop(context.Background())
	if _, ok := tp.(noop.TracerProvider); !ok {
		t.Fatalf("no endpoint: %T, want the no-op provider", tp)
	}
	// Nothing listens there: creating the exporter does not dial, and
	// the flush at exit gives up within its context.
	tp, stop, err = startTracing(lookup(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:pw@127.0.0.1:1"}), log)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tp.(*sdktrace.TracerProvider); !ok {
		t.Fatalf("with an endpoint: %T, want the SDK's provider", tp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	stop(ctx)
	if got := redactEndpoint("https://user:pw@collector:4318/v1/traces?k=v"); got != "https://collector:4318/v1/traces" {
		t.Errorf("redactEndpoint: %q", got)
	}
}

func TestDurationsLoggedInMilliseconds(t *testing.T) {
	var b bytes.Buffer
	log := newLogger(&config{LogFormat: "json", LogLevel: "info"}, &b)
	log.Info("x", "drain_window", 1500*time.Millisecond)
	if !strings.Contains(b.String(), `"drain_window_ms":1500`) {
		t.Fatalf("logged %s", b.String())
	}
}
