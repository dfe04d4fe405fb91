package handlers

import (
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// Refusal reasons of topohub_handshakes_refused_total: a fixed set, so
// the label never carries a user, a topology or a message.
const (
	refusedOrigin       = "origin"
	refusedDraining     = "draining"
	refusedUnauthorized = "unauthorized" // 401: missing, malformed, expired, bad signature, used ticket...
	refusedForbidden    = "forbidden"    // 403: role
	refusedInvalid      = "invalid_topology"
	refusedNotFound     = "not_found"
	refusedCap          = "too_many_connections"
	refusedUnavailable  = "unavailable" // Redis failed or timed out
)

const (
	transportWS  = "websocket"
	transportSSE = "sse"
)

// serverMetrics are the metrics the routes count themselves. Every child
// a route uses is resolved here once, so no request looks a label up,
// and none is per user or per topology.
type serverMetrics struct {
	refused       *prometheus.CounterVec
	ticketsMinted prometheus.Counter
	ticketsRedeem prometheus.Counter
	ticketsRefuse *prometheus.CounterVec
	rateLimited   prometheus.Counter
	closes        map[websocket.StatusCode]prometheus.Counter
	slowDrops     map[string]prometheus.Counter
	conns         map[string]prometheus.Gauge
	handshake     map[string]prometheus.Observer
	oversized     prometheus.Counter
}

// wsCloseCodes are the close codes the hub sends (ws_closes_total).
var wsCloseCodes = []websocket.StatusCode{CloseNormal, CloseGoingAway, CloseInvalidData, ClosePolicy, CloseTooBig, CloseCredentials}

func newServerMetrics(reg prometheus.Registerer, build BuildInfo) *serverMetrics {
	m := &serverMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "topohub_handshakes_refused_total",
			Help: "Stream handshakes (WebSocket upgrade or SSE request) refused before the stream started, by transport and reason."}, []string{"transport", "reason"}),
		ticketsMinted: prometheus.NewCounter(prometheus.CounterOpts{Name: "topohub_tickets_minted_total", Help: "Tickets minted by POST <base>/auth/sse-ticket."}),
		ticketsRedeem: prometheus.NewCounter(prometheus.CounterOpts{Name: "topohub_tickets_redeemed_total", Help: "Tickets redeemed (handshakes and WebSocket refreshes)."}),
		ticketsRefuse: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "topohub_tickets_refused_total",
			Help: "Ticket mints and redemptions refused, by reason (invalid: unknown, used or expired ticket, which includes the spent ticket of a native EventSource reconnect that its resume cookie then admits; origin: a cross-origin mint from an origin not in TOPOHUB_CORS_ORIGINS; rate_limited: minting too fast; credentials: the token or session was refused; unavailable: Redis failed)."}, []string{"reason"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "topohub_ws_rate_limited_total", Help: "rate_limited error frames sent to WebSocket clients over the control rate."}),
		oversized: prometheus.NewCounter(prometheus.CounterOpts{Name: "topohub_ws_frames_dropped_total",
			Help: "Event frames not sent on WebSocket because they exceed the 1 MiB message limit (SSE still carries them)."}),
		closes:    map[websocket.StatusCode]prometheus.Counter{},
		slowDrops: map[string]prometheus.Counter{},
		conns:     map[string]prometheus.Gauge{},
		handshake: map[string]prometheus.Observer{},
	}
	closes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "topohub_ws_closes_total",
		Help: "WebSocket close frames the hub started, by close code (1008: control channel abused or reply queue full)."}, []string{"code"})
	for _, c := range wsCloseCodes {
		m.closes[c] = closes.WithLabelValues(strconv.Itoa(int(c)))
	}
	slow := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "topohub_slow_client_drops_total",
		Help: "Clients dropped because a write or a ping's pong did not complete within the write timeout, by transport."}, []string{"transport"})
	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "topohub_connections",
		Help: "Open stream connections, by transport."}, []string{"transport"})
	hs := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "topohub_handshake_duration_seconds",
		Help:    "Time from a stream request to its admission (credentials, snapshot read, cap), admitted streams only, by transport.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"transport"})
	for _, tr := range []string{transportWS, transportSSE} {
		m.slowDrops[tr] = slow.WithLabelValues(tr)
		m.conns[tr] = conns.WithLabelValues(tr)
		m.handshake[tr] = hs.WithLabelValues(tr)
		for _, r := range []string{refusedOrigin, refusedDraining, refusedUnauthorized, refusedForbidden, refusedInvalid, refusedNotFound, refusedCap, refusedUnavailable} {
			if tr == transportWS && (r == refusedInvalid || r == refusedNotFound) {
				continue // cannot happen on that transport
			}
			m.refused.WithLabelValues(tr, r) // exported at 0 from the start
		}
	}
	for _, r := range []string{"invalid", "rate_limited", "credentials", "unavailable", refusedOrigin} {
		m.ticketsRefuse.WithLabelValues(r)
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Name: "topohub_build_info", Help: "Always 1; the labels name the running build.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion}})
	buildInfo.Set(1)
	reg.MustRegister(m.refused, m.ticketsMinted, m.ticketsRedeem, m.ticketsRefuse, m.rateLimited, m.oversized, closes, slow, conns, hs, buildInfo)
	return m
}

// handshakeDone records an admitted stream's handshake time.
func (m *serverMetrics) handshakeDone(transport string, start time.Time) {
	m.handshake[transport].Observe(time.Since(start).Seconds())
}
