package handlers

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/time/rate"
)

// scrape reads /metrics into sample -> value, a sample written as
// Prometheus does: name{label="v",...} with labels sorted by name.
func (th *testHub) scrape() map[string]float64 {
	th.t.Helper()
	resp := th.get(context.Background(), th.http.URL+"/metrics", nil)
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestMetricsScenario drives each counter the routes and the hub added
// for operators by a known amount.
func TestMetricsScenario(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, time.Minute)), withConfig(func(c *Config) {
		c.ControlRate, c.ControlBurst, c.MaxControlViolations = rate.Limit(0.01), 1, 3
		c.TicketRate, c.TicketBurst = rate.Limit(0.001), 2
		c.Build = BuildInfo{Version: "v9.9.9", Revision: "abc123", GoVersion: "go1.26"}
	}))
	topo := th.newTopology()
	before := th.scrape()
	delta := func(after map[string]float64, sample string) float64 { return after[sample] - before[sample] }

	// Refused handshakes, one per reason.
	badTok := signToken(t, []byte("another-secret-of-at-least-32-bytes!!"))
	th.status(http.MethodGet, th.sseURL(topo), bearer(badTok))                            // sse unauthorized
	th.status(http.MethodGet, th.sseURL("nope-"+topo), bearer(th.token()))                // sse not_found
	th.status(http.MethodGet, th.sseURL("a.b"), bearer(th.token()))                       // sse invalid_topology
	th.status(http.MethodGet, th.sseURL(topo), bearer(th.token(claim("role", "intern")))) // sse forbidden
	if _, _, err := th.dialWS(th.wsURL(), bearer(badTok)); err == nil {                   // websocket unauthorized
		t.Fatal("bad token accepted")
	}
	if _, _, err := th.dialWS(th.wsURL(), http.Header{"Authorization": {"Bearer " + th.token()}, "Origin": {"https://evil.example"}}); err == nil {
		t.Fatal("foreign origin accepted")
	}

	// Tickets: two minted, a third over the rate; one redeemed, then
	// refused when used again.
	tk := th.mintTicket(th.token())
	th.mintTicket(th.token())
	if code, _ := th.status(http.MethodPost, th.ticketURL(), bearer(th.token())); code != http.StatusTooManyRequests {
		t.Fatalf("third mint: %d, want 429", code)
	}
	stream := th.openSSE(th.sseURL(topo)+"?ticket="+tk, nil)
	stream.nextEvent()                                            // snapshot
	th.status(http.MethodGet, th.sseURL(topo)+"?ticket="+tk, nil) // sse unauthorized (spent ticket)

	// A cursor the hub cannot honour: one resync (cursor).
	stale := th.openSSE(th.sseURL(topo), http.Header{"Authorization": {"Bearer " + th.token(claim("uuid", "user-2"))}, "Last-Event-ID": {"1-1"}})
	stale.nextEvent()
	stale.Close()

	// A WebSocket that abuses the control channel: burst 1, so pings
	// 2..5 are rate_limited and the fourth violation closes with 1008.
	ws := th.openWS(bearer(th.token(claim("uuid", "user-3"))))
	mid := th.scrape()
	if mid[`topohub_connections{transport="websocket"}`] != 1 || mid[`topohub_connections{transport="sse"}`] != 1 {
		t.Errorf("connections: websocket %v sse %v, want 1 and 1", mid[`topohub_connections{transport="websocket"}`], mid[`topohub_connections{transport="sse"}`])
	}
	for i := range 5 {
		ws.send(fmt.Sprintf(`{"op":"ping","id":"%d"}`, i))
	}
	ws.expectClose(ClosePolicy, 10*time.Second)

	// One event routed, then a bus gap: the open SSE stream is resynced.
	th.publish("topology."+topo+".status", `{"state":"degraded"}`)
	stream.nextEvent()
	th.hub.BusGap()
	stream.nextEvent()

	waitFor(t, 10*time.Second, "websocket released", func() bool {
		return th.scrape()[`topohub_connections{transport="websocket"}`] == 0
	})
	after := th.scrape()
	want := map[string]float64{
		`topohub_handshakes_refused_total{reason="unauthorized",transport="sse"}`:       2,
		`topohub_handshakes_refused_total{reason="not_found",transport="sse"}`:          1,
		`topohub_handshakes_refused_total{reason="invalid_topology",transport="sse"}`:   1,
		`topohub_handshakes_refused_total{reason="forbidden",transport="sse"}`:          1,
		`topohub_handshakes_refused_total{reason="unauthorized",transport="websocket"}`: 1,
		`topohub_handshakes_refused_total{reason="origin",transport="websocket"}`:       1,
		`topohub_tickets_minted_total`:                                                  2,
		`topohub_tickets_redeemed_total`:                                                1,
		`topohub_tickets_refused_total{reason="rate_limited"}`:                          1,
		`topohub_tickets_refused_total{reason="invalid"}`:                               1,
		`topohub_ws_rate_limited_total`:                                                 4,
		`topohub_ws_closes_total{code="1008"}`:                                          1,
		`topohub_resyncs_total{reason="cursor"}`:                                        1,
		`topohub_resyncs_total{reason="bus_gap"}`:                                       1,
		`topohub_resyncs_total{reason="slow"}`:                                          0,
		`topohub_events_routed_total`:                                                   1,
		`topohub_handshake_duration_seconds_count{transport="sse"}`:                     2,
		`topohub_handshake_duration_seconds_count{transport="websocket"}`:               1,
	}
	for sample, n := range want {
		if got := delta(after, sample); got != n {
			t.Errorf("%s moved by %v, want %v", sample, got, n)
		}
	}
	if after[`topohub_build_info{goversion="go1.26",revision="abc123",version="v9.9.9"}`] != 1 {
		t.Error("no topohub_build_info naming the build")
	}
	for sample := range after {
		if strings.Contains(sample, topo) || strings.Contains(sample, "user-") {
			t.Errorf("a metric is labelled with a topology or a user: %s", sample)
		}
	}
}

// TestSlowClientDropCounted: a WebSocket client that completes the
// handshake and then reads nothing never answers the keepalive ping; it
// is dropped within the write timeout and counted.
func TestSlowClientDropCounted(t *testing.T) {
	th := newTestHub(t, withConfig(func(c *Config) {
		c.Keepalive, c.WriteTimeout = 50*time.Millisecond, 200*time.Millisecond
	}))
	before := th.scrape()[`topohub_slow_client_drops_total{transport="websocket"}`]
	conn, err := net.Dial("tcp", strings.TrimPrefix(th.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: topohub.v1\r\nAuthorization: Bearer %s\r\n\r\n", th.token())
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	// From here on nothing is read, so no ping is answered.
	waitFor(t, 10*time.Second, "slow client dropped and counted", func() bool {
		return th.scrape()[`topohub_slow_client_drops_total{transport="websocket"}`] == before+1
	})
}

// TestTracedHandshake records the spans of an SSE and a WebSocket
// handshake and of a ticket mint with the SDK's in-memory exporter.
func TestTracedHandshake(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	th := newTestHub(t, withTickets(newTestTickets(t, time.Minute)), withConfig(func(c *Config) { c.TracerProvider = tp }))
	topo := th.newTopology()
	tk := th.mintTicket(th.token())
	s := th.openSSE(th.sseURL(topo)+"?ticket="+tk, nil)
	s.nextEvent()
	th.openWS(bearer(th.token(claim("uuid", "user-ws"))))

	waitFor(t, 10*time.Second, "handshake spans", func() bool {
		n := 0
		for _, sp := range exp.GetSpans() {
			if sp.Name == "api.topology.events" || sp.Name == "api.ws.handshake" {
				n++
			}
		}
		return n == 2
	})
	spans := exp.GetSpans()
	byID := map[string]tracetest.SpanStub{}
	for _, sp := range spans {
		byID[sp.SpanContext.SpanID().String()] = sp
	}
	children := map[string][]string{}
	for _, sp := range spans {
		if p, ok := byID[sp.Parent.SpanID().String()]; ok && sp.Parent.IsValid() {
			children[p.Name] = append(children[p.Name], sp.Name)
		}
	}
	for root, want := range map[string]string{
		"api.topology.events": "auth,snapshot.read,admission",
		"api.ws.handshake":    "auth,admission",
	} {
		if got := strings.Join(children[root], ","); got != want {
			t.Errorf("%s has children %q, want %q", root, got, want)
		}
	}
	found := false
	for _, sp := range spans {
		found = found || sp.Name == "api.auth.sse_ticket"
		for _, a := range sp.Attributes {
			if strings.Contains(a.Value.Emit(), tk) || strings.Contains(a.Value.Emit(), "eyJ") {
				t.Errorf("span %s carries a credential in %s", sp.Name, a.Key)
			}
		}
	}
	if !found {
		t.Error("no api.auth.sse_ticket span")
	}
}

// TestWebSocketNeverSendsOver1MiB: a snapshot larger than 1 MiB (many or
// huge in-flight mutations) is not sent on WebSocket, where clients at
// their default read limit would close with 1009, and is counted.
func TestWebSocketNeverSendsOver1MiB(t *testing.T) {
	th := newTestHub(t)
	topo := th.newTopology()
	th.addMutation(topo, "m1", `{"id":"m1","topology_id":"`+topo+`","op":"add_decky","payload":{"blob":"`+strings.Repeat("z", 1<<20)+`"},"state":"pending","requested_at":"2026-11-28T10:00:00+00:00","applied_at":null,"reason":null}`)
	before := th.scrape()[`topohub_ws_frames_dropped_total`]
	c := th.openWS(bearer(th.token()))
	c.send(`{"op":"subscribe","id":"1","topology":"` + topo + `"}`)
	c.expect("subscribed")
	waitFor(t, 10*time.Second, "oversized snapshot counted", func() bool {
		return th.scrape()[`topohub_ws_frames_dropped_total`] == before+1
	})
	c.send(`{"op":"ping","id":"2"}`)
	c.expect("pong") // nothing over the limit came before it
}
