package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"topohub/hub"
	"topohub/internal/redistest"
)

// Browser tests of topohub.js itself (close codes, refresh in place, the
// fallback's event names) and of react.js with a real React build, in
// Debian's headless Chromium against a hub on a real redis-server.

// clientPage opens an HTML page of th's origin (the console, idle without
// a token) and starts window.T, a topohub.js connection built by the
// page's own script with the given extra connect options (a JS object
// literal's body). getTicket mints a ticket from window.T.token, so a test
// can rotate the page's access token as an app would. T records what the
// test checks: WebSockets opened, tickets minted, states, deliveries.
func clientPage(t *testing.T, th *testHub, token, topology, options string) *page {
	t.Helper()
	p := newPage(t)
	p.navigate(th.http.URL + "/")
	p.waitJS("the idle console", `document.readyState === "complete" && document.querySelector("#notice").textContent.includes("Paste a token")`)
	script := `
window.T = {token: ` + strconv.Quote(token) + `, sockets: 0, tickets: 0, states: [], got: [], errors: []};
(async () => {
  const mod = await import("/topohub.js");
  T.mod = mod;
  class CountingWebSocket extends WebSocket {
    constructor(...args) { super(...args); T.sockets++; T.closes = T.closes || []; this.addEventListener("close", e => T.closes.push([e.code, e.reason, e.wasClean])); }
  }
  T.hub = mod.connect({
    url: location.origin,
    WebSocket: CountingWebSocket,
    initialBackoff: 50, maxBackoff: 200,
    getTicket: async () => {
      const r = await fetch("/api/v1/auth/sse-ticket", {method: "POST", headers: {Authorization: "Bearer " + T.token}});
      if (!r.ok) throw new Error("ticket " + r.status);
      T.tickets++;
      return (await r.json()).ticket;
    },
    ` + options + `
  });
  T.hub.addEventListener("state", (e) => T.states.push(e.detail.state));
  T.hub.subscribe(` + strconv.Quote(topology) + `, {
    snapshot: (d, id) => T.got.push({kind: "snapshot", status: d.status, id}),
    resync: (d, id) => T.got.push({kind: "resync", status: d.status, id}),
    event: (name, d, id) => T.got.push({kind: "event", name, id, payload: d.payload}),
    error: (e) => T.errors.push(e.code),
  });
})().catch((e) => { window.T.failed = String(e); });
"started"`
	if got := p.eval(script); got != "started" {
		t.Fatalf("script: %q", got)
	}
	return p
}

// stays checks that a JavaScript predicate holds for all of d, polling
// it: what a test asserts must NOT happen (a reconnect) needs a window in
// which it would have happened. d is a few times the page's largest
// backoff, so a scheduled reconnect would fall inside it.
func (p *page) stays(what, expr string, d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if p.eval(`String(!!(`+expr+`))`) != "true" {
			p.t.Fatalf("%s: no longer holds: %s\nstate: %s", what, expr, p.eval(`JSON.stringify({states: T.states, sockets: T.sockets, tickets: T.tickets, error: T.hub.error, closes: T.closes})`))
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

func TestBrowserClientRefreshesInPlace(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	// The first token ends a few seconds from now; its session would be
	// cut with 4001 then, and the client would reconnect and resync.
	firstExp := time.Now().Add(6 * time.Second).Unix()
	first := th.token(claim("exp", firstExp))
	second := th.token()
	p := clientPage(t, th, first, id, `refreshLead: 1500,`)

	p.waitJS("open", `window.T.hub && T.hub.state === "open"`)
	p.waitJS("the snapshot", `T.got.some(g => g.kind === "snapshot")`)
	// The refresh sent right after open learns the session's end.
	p.waitJS("the first session end", fmt.Sprintf(`T.hub.expiresAt === %d`, firstExp*1000))
	// The app rotates its token; the next refresh mints from the new one.
	p.eval(`T.token = ` + strconv.Quote(second) + `; "ok"`)
	p.waitJS("a refresh to the second token's end", fmt.Sprintf(`T.hub.expiresAt > %d`, firstExp*1000))
	p.waitJS("the first token's exp to pass", fmt.Sprintf(`Date.now() > %d`, firstExp*1000+1000))

	th.publish("topology."+id+".status", `{"state":"still-here"}`)
	p.waitJS("an event after the first exp", `T.got.some(g => g.kind === "event" && g.payload.state === "still-here")`)
	got := p.eval(`JSON.stringify({sockets: T.sockets, states: T.states, snapshots: T.got.filter(g => g.kind !== "event").length})`)
	if got != `{"sockets":1,"states":["open"],"snapshots":1}` {
		t.Fatalf("want one WebSocket, no state change and the first snapshot only (no resync): %s", got)
	}
	if n := th.hub.Clients(); n != 1 {
		t.Fatalf("hub has %d clients", n)
	}
}

func TestBrowserClientExpiredReconnectsWithFreshCredentials(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	exp := time.Now().Add(3 * time.Second).Unix()
	// No refresh: the hub ends the session at exp with 4001 "credentials
	// expired", which must reconnect at once, resuming from the cursor.
	p := clientPage(t, th, th.token(claim("exp", exp)), id, `refresh: false,`)
	p.waitJS("open", `window.T.hub && T.hub.state === "open"`)
	p.waitJS("the snapshot", `T.got.some(g => g.kind === "snapshot")`)
	p.eval(`T.token = ` + strconv.Quote(th.token()) + `; "ok"`)
	p.waitJS("a second WebSocket, open", `T.sockets === 2 && T.hub.state === "open"`)
	if got := p.eval(`JSON.stringify(T.states)`); got != `["open","connecting","open"]` {
		t.Fatalf("states %s, want open, connecting, open (no error)", got)
	}
	th.publish("topology."+id+".status", `{"state":"after-reauth"}`)
	p.waitJS("an event on the new session", `T.got.some(g => g.kind === "event" && g.payload.state === "after-reauth")`)
	if got := p.eval(`String(T.got.filter(g => g.kind !== "event").length)`); got != "1" {
		t.Fatalf("%s snapshots, want 1: the reconnect resumes from the cursor", got)
	}
}

func TestBrowserClientRevokedStops(t *testing.T) {
	revs := newTestRevocations(t)
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withRevocations(revs))
	th.watchRevocations(20 * time.Millisecond)
	id := th.newTopology()
	jti := redistest.UniqueID("j-")
	p := clientPage(t, th, th.token(claim("jti", jti)), id, ``)
	p.waitJS("open", `window.T.hub && T.hub.state === "open"`)
	p.waitJS("the snapshot", `T.got.some(g => g.kind === "snapshot")`)

	if err := revs.Revoke(context.Background(), jti); err != nil {
		t.Fatal(err)
	}
	p.waitJS("the error state", `T.hub.state === "error" && T.hub.error.code === 4001 && T.hub.error.reason === "credentials revoked"`)
	p.stays("no reconnect attempt", `T.sockets === 1 && T.hub.state === "error" && T.hub.transport === "none"`, time.Second)
	if got := p.eval(`JSON.stringify(T.states)`); got != `["open","error"]` {
		t.Fatalf("states %s", got)
	}
}

func TestBrowserClientStopsOnMessageTooBig(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	// A refresh token over the hub's 4 KiB message limit: the hub closes
	// with 1009, and reconnecting would only send it again.
	p := clientPage(t, th, th.token(), id, `getToken: async () => "x".repeat(5000),`)
	p.waitJS("the error state", `window.T.hub && T.hub.state === "error" && T.hub.error.code === 1009`)
	p.stays("no reconnect attempt", `T.sockets === 1 && T.hub.state === "error"`, time.Second)
	if got := p.eval(`JSON.stringify(T.states)`); got != `["open","error"]` {
		t.Fatalf("states %s", got)
	}
}

func TestBrowserClientFallbackConfiguredFamily(t *testing.T) {
	families := append(hub.DefaultFamilies(), hub.Family{Prefix: "alert", Route: hub.RouteSegment})
	th := newTestHub(t, withTickets(newTestTickets(t, 0)),
		withConfig(func(c *Config) { c.DisableWebSocket = true }),
		withHubConfig(func(c *hub.Config) { c.Families = families }))
	id := th.newTopology()
	// The page extends the module's own list: no copy of it here.
	p := clientPage(t, th, th.token(), id, `fallbackAfter: 1, eventNames: [...mod.DEFAULT_EVENT_NAMES, "raised"],`)
	p.waitJS("the fallback", `window.T.hub && T.hub.state === "fallback" && T.hub.transport === "sse"`)
	p.waitJS("the snapshot over SSE", `T.got.some(g => g.kind === "snapshot")`)
	th.publish("alert."+id+".raised", `{"type":"raised","payload":{"severity":"high"}}`)
	th.publish("topology."+id+".status", `{"state":"degraded"}`)
	p.waitJS("the configured family's event", `T.got.some(g => g.kind === "event" && g.name === "raised" && g.payload.severity === "high")`)
	p.waitJS("a contract event", `T.got.some(g => g.kind === "event" && g.name === "status")`)
}

// reactPage serves react.js and topohub.js from the source tree and
// React's UMD builds from web/testdata (npm), on an origin that proxies
// everything else to the hub, so the page, the ticket route and the
// WebSocket share one origin as in production.
func reactPage(t *testing.T, th *testHub, page string) string {
	t.Helper()
	webDir, err := filepath.Abs("../web")
	if err != nil {
		t.Fatal(err)
	}
	umd := filepath.Join(webDir, "testdata", "node_modules")
	for _, f := range []string{"react/umd/react.production.min.js", "react-dom/umd/react-dom.production.min.js"} {
		if _, err := os.Stat(filepath.Join(umd, f)); err != nil {
			t.Fatalf("%s is missing: install the test-only npm packages with `npm ci --prefix web/testdata` (.ci/run does it)", f)
		}
	}
	target, _ := url.Parse(th.http.URL)
	mux := http.NewServeMux()
	mux.Handle("/client/", http.StripPrefix("/client/", http.FileServer(http.Dir(webDir))))
	mux.Handle("/vendor/", http.StripPrefix("/vendor/", http.FileServer(http.Dir(umd))))
	mux.HandleFunc("/react-test.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, page)
	})
	mux.Handle("/", httputil.NewSingleHostReverseProxy(target))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/react-test.html"
}

const reactTestPage = `<!doctype html>
<meta charset="utf-8">
<title>useTopologyStream</title>
<div id="root"></div>
<script src="/vendor/react/umd/react.production.min.js"></script>
<script src="/vendor/react-dom/umd/react-dom.production.min.js"></script>
<script type="module">
import { connect } from "/client/topohub.js";
import { createTopologyStream } from "/client/react.js";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token");
const hub = connect({
  url: location.origin,
  getTicket: async () => {
    const r = await fetch("/api/v1/auth/sse-ticket", {method: "POST", headers: {Authorization: "Bearer " + token}});
    if (!r.ok) throw new Error("ticket " + r.status);
    return (await r.json()).ticket;
  },
});
const useTopologyStream = createTopologyStream(hub, React);
const h = React.createElement;

function Topology({ id }) {
  const { status, inFlight, events, transport, state } = useTopologyStream(id);
  return h("section", { id: "topology", "data-status": status, "data-transport": transport, "data-state": state, "data-events": events.length },
    h("h2", null, id + ": " + status),
    h("ul", { className: "in-flight" }, inFlight.map((m) => h("li", { key: m.id, "data-mutation": m.id, "data-state": m.state }, m.op))));
}

window.renders = 0;
function App() {
  window.renders++;
  return h(Topology, { id: params.get("topology") });
}
ReactDOM.createRoot(document.getElementById("root")).render(h(React.StrictMode, null, h(App)));
window.ready = true;
</script>`

func TestBrowserReactHook(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	row := func(mid, state, at string) string {
		b, _ := json.Marshal(map[string]any{"id": mid, "topology_id": id, "op": "add_decky", "payload": map[string]any{},
			"state": state, "requested_at": at, "applied_at": nil, "reason": nil})
		return string(b)
	}
	th.addMutation(id, "m1", row("m1", "pending", "2025-11-28T10:00:00+00:00"))
	p := newPage(t)
	p.navigate(reactPage(t, th, reactTestPage) + "#" + url.Values{"token": {th.token()}, "topology": {id}}.Encode())

	inFlight := func(want string) string {
		return fmt.Sprintf(`[...document.querySelectorAll("#topology .in-flight li")].map(li => li.dataset.mutation + ":" + li.dataset.state).join(",") === %q`, want)
	}
	topo := func(attr, want string) string {
		return fmt.Sprintf(`(document.querySelector("#topology") || {dataset: {}}).dataset.%s === %q`, attr, want)
	}
	p.waitJS("the page's modules", `window.ready === true`)
	p.waitJS("the WebSocket", topo("transport", "websocket"))
	p.waitJS("the snapshot's status", topo("status", "active"))
	p.waitJS("the snapshot's in-flight row", inFlight("m1:pending"))

	th.publish("topology."+id+".mutation.enqueued", `{"type":"enqueued","payload":{"mutation_id":"m2","op":"remove_decky","payload":{}}}`)
	p.waitJS("m2 enqueued, newest first", inFlight("m2:pending,m1:pending"))
	th.publish("topology."+id+".mutation.applying", `{"type":"applying","payload":{"mutation_id":"m1","op":"add_decky","payload":"{}"}}`)
	p.waitJS("m1 applying", inFlight("m2:pending,m1:applying"))
	th.publish("topology."+id+".status", `{"type":"status","payload":{"state":"degraded","reason":"disk"}}`)
	p.waitJS("the status event", topo("status", "degraded"))
	th.publish("topology."+id+".mutation.applied", `{"type":"applied","payload":{"mutation_id":"m1","op":"add_decky"}}`)
	p.waitJS("m1 applied", inFlight("m2:pending"))
	p.waitJS("four events kept", topo("events", "4"))

	// The topology changes behind the page's back; a bus gap makes the hub
	// send a resync snapshot, which replaces status and rows.
	ctx := context.Background()
	th.createTopology(id, "maintenance")
	if err := th.rdb.Del(ctx, th.snaps.MutationsKey(id)).Err(); err != nil {
		t.Fatal(err)
	}
	th.addMutation(id, "m7", row("m7", "applying", "2025-11-28T11:00:00Z"))
	th.hub.BusGap()
	p.waitJS("the resync's status", topo("status", "maintenance"))
	p.waitJS("the resync's rows", inFlight("m7:applying"))
	if got := p.eval(`String(document.querySelector("#topology").dataset.events)`); got != "4" {
		t.Errorf("events after the resync: %s, want the 4 kept", got)
	}
	if n := th.hub.Clients(); n != 1 {
		t.Errorf("hub has %d clients, want 1 (StrictMode's double mount shares one connection)", n)
	}
	if text := p.eval(`document.querySelector("#topology h2").textContent`); !strings.HasSuffix(text, ": maintenance") {
		t.Errorf("heading %q", text)
	}
}
