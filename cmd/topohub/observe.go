package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// newLogger builds the process's logger: text or JSON at the configured
// level, with every duration written in milliseconds under a key ending
// in _ms (slog's JSON handler would write nanoseconds).
func newLogger(cfg *config, w io.Writer) *slog.Logger {
	level, _ := parseLogLevel(cfg.LogLevel) // checked by loadConfig
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationsInMillis}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func durationsInMillis(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		d := a.Value.Duration()
		return slog.Float64(a.Key+"_ms", float64(d.Microseconds())/1000)
	}
	return a
}

// redisLogger routes go-redis's own log lines (pool and reconnect
// notices, which it would print as plain text on stderr) into slog, as
// warnings, with the password masked should one ever appear.
// They repeat on every failed dial, so at most 3 are logged per 10 s.
type redisLogger struct {
	log       *slog.Logger
	passwords []string
	limit     *rate.Sometimes
}

func newRedisLogger(log *slog.Logger, passwords []string) redisLogger {
	return redisLogger{log: log, passwords: passwords, limit: &rate.Sometimes{First: 3, Interval: 10 * time.Second}}
}

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	logged := false
	l.limit.Do(func() { logged = true })
	if !logged {
		return
	}
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	for _, p := range l.passwords {
		msg = strings.ReplaceAll(msg, p, "***")
	}
	l.log.WarnContext(ctx, "redis client", "detail", msg)
}

// startTracing installs an OTLP/HTTP trace exporter when
// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
// set; the exporter reads the other OTEL_EXPORTER_OTLP_* variables
// itself. Otherwise tracing is off: a no-op provider, no cost per span.
// The returned function flushes and stops the exporter within ctx.
func startTracing(lookupEnv func(string) (string, bool), log *slog.Logger) (trace.TracerProvider, func(context.Context), error) {
	endpoint, ok := lookupEnv("OTEL_EXPORTER_OTLP_ENDPOINT")
	if !ok || endpoint == "" {
		endpoint, ok = lookupEnv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	}
	if !ok || endpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) {}, nil
	}
	exp, err := otlptracehttp.New(context.Background())
	if err != nil {
		return nil, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	name := "topohub"
	if v, ok := lookupEnv("OTEL_SERVICE_NAME"); ok && v != "" {
		name = v
	}
	res := resource.NewSchemaless(attribute.String("service.name", name), attribute.String("service.version", buildInfo().Version))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	log.Info("tracing on", "endpoint", redactEndpoint(endpoint))
	return tp, func(ctx context.Context) {
		if err := tp.Shutdown(ctx); err != nil {
			log.Warn("trace exporter not flushed", "err", err)
		}
	}, nil
}

// redactEndpoint drops user info and query from a collector URL.
func redactEndpoint(s string) string {
	if i := strings.Index(s, "@"); i >= 0 {
		if j := strings.Index(s, "://"); j >= 0 && j < i {
			s = s[:j+3] + s[i+1:]
		}
	}
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	return s
}
