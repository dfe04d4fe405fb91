package handlers

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser tests of the edge: a page on another origin (CORS and the
// WebSocket origin check), a native EventSource reconnecting by itself
// with the resume cookie, and (operations_test.go) nginx in front.

// blankOrigin serves an empty HTML page: another origin for a page to
// live on.
func blankOrigin(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<!doctype html><html><body>dashboard</body></html>"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// edgeScript starts, in the page, window.E: a topohub.js connection to hub
// (imported from hub) following wsTopology, and a native EventSource
// (withCredentials) on sseTopology, both with tickets minted from token at
// hub. E records every delivery with Date.now().
func edgeScript(hub, token, wsTopology, sseTopology string) string {
	return `
window.E = {ws: [], sse: [], tickets: 0, sockets: 0, esErrors: 0, failures: []};
(async () => {
  const hub = ` + strconv.Quote(hub) + `;
  const ticket = async () => {
    const r = await fetch(hub + "/api/v1/auth/sse-ticket", {method: "POST", headers: {Authorization: "Bearer " + ` + strconv.Quote(token) + `}});
    if (!r.ok) throw new Error("ticket " + r.status);
    E.tickets++;
    return (await r.json()).ticket;
  };
  const es = new EventSource(hub + "/api/v1/topologies/` + sseTopology + `/events?ticket=" + encodeURIComponent(await ticket()), {withCredentials: true});
  E.es = es;
  es.onerror = () => { E.esErrors++; };
  for (const name of ["snapshot", "status"]) {
    es.addEventListener(name, (e) => E.sse.push({name, at: Date.now(), id: e.lastEventId, data: JSON.parse(e.data)}));
  }
  const mod = await import(hub + "/topohub.js");
  class CountingWebSocket extends WebSocket {
    constructor(...args) { super(...args); E.sockets++; }
  }
  E.hub = mod.connect({url: hub, getTicket: ticket, WebSocket: CountingWebSocket, initialBackoff: 50, maxBackoff: 200});
  E.hub.subscribe(` + strconv.Quote(wsTopology) + `, {
    snapshot: (d, id) => E.ws.push({name: "snapshot", at: Date.now(), id, data: d}),
    resync: (d, id) => E.ws.push({name: "resync", at: Date.now(), id, data: d}),
    event: (name, d, id) => E.ws.push({name, at: Date.now(), id, data: d}),
  });
})().catch((e) => { E.failures.push(String(e)); });
"started"`
}

// settle waits for a freshly navigated page to answer expr with true.
// Unlike waitJS it evaluates anew each time, so the execution context a
// navigation replaced (chromedp: "Cannot find context with specified
// id") is not fatal.
func (p *page) settle(what, expr string) {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](expr))
		if err == nil && v {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

// start runs script in the page.
func (p *page) start(script string) {
	p.t.Helper()
	if got := p.eval(script); got != "started" {
		p.t.Fatalf("script: %q", got)
	}
}

// arrivesWithin publishes a status carrying note and checks that the
// page's list (E.ws or E.sse) receives it within d of the PUBLISH, as the
// page's clock tells.
func arrivesWithin(t *testing.T, p *page, th *testHub, list, topology, note string, d time.Duration) {
	t.Helper()
	sent := time.Now().UnixMilli()
	th.publish("topology."+topology+".status", `{"state":"degraded","note":"`+note+`"}`)
	found := fmt.Sprintf(`E.%s.some(g => g.name === "status" && g.data.payload.note === %q)`, list, note)
	p.waitJS(note, found)
	at, _ := strconv.ParseInt(p.eval(fmt.Sprintf(`String(E.%s.find(g => g.name === "status" && g.data.payload.note === %q).at)`, list, note)), 10, 64)
	if lag := time.Duration(at-sent) * time.Millisecond; lag > d {
		t.Errorf("%s arrived %v after the PUBLISH, want within %v", note, lag, d)
	}
}

func TestBrowserCrossOrigin(t *testing.T) {
	dash, stranger := blankOrigin(t), blankOrigin(t)
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) { c.CORSOrigins = []string{dash.URL} }))
	wsTopo, sseTopo := th.newTopology(), th.newTopology()
	tok := th.token()

	p := newPage(t)
	p.navigate(dash.URL + "/")
	p.settle("the dashboard page", `document.readyState === "complete" && document.body.textContent === "dashboard"`)
	p.start(edgeScript(th.http.URL, tok, wsTopo, sseTopo))
	p.waitJS("the WebSocket open from the dashboard's origin", `window.E.hub && E.hub.state === "open" && E.hub.transport === "websocket"`)
	p.waitJS("the WebSocket snapshot", `E.ws.some(g => g.name === "snapshot")`)
	p.waitJS("the EventSource snapshot", `E.sse.some(g => g.name === "snapshot")`)
	arrivesWithin(t, p, th, "ws", wsTopo, "ws-cross", 10*time.Second)
	arrivesWithin(t, p, th, "sse", sseTopo, "sse-cross", 10*time.Second)
	if got := p.eval(`JSON.stringify(E.failures)`); got != "[]" {
		t.Errorf("page failures: %s", got)
	}

	// An unlisted origin: its ticket fetch fails the preflight, and a
	// ticket handed to it by other means is neither spent on the
	// EventSource nor on the WebSocket.
	q := newPage(t)
	q.navigate(stranger.URL + "/")
	q.settle("the stranger's page", `document.readyState === "complete" && document.body.textContent === "dashboard"`)
	spare := th.mintTicket(tok)
	q.start(`
window.S = {};
(async () => {
  const hub = ` + strconv.Quote(th.http.URL) + `;
  try { await fetch(hub + "/api/v1/auth/sse-ticket", {method: "POST", headers: {Authorization: "Bearer x"}}); S.fetch = "ok"; }
  catch (e) { S.fetch = "refused"; }
  try { await import(hub + "/topohub.js"); S.module = "ok"; } catch (e) { S.module = "refused"; }
  const es = new EventSource(hub + "/api/v1/topologies/` + sseTopo + `/events?ticket=` + spare + `", {withCredentials: true});
  es.onopen = () => { S.es = "open"; };
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) S.es = "refused"; };
  const ws = new WebSocket(hub.replace("http", "ws") + "/api/v1/ws?ticket=` + spare + `", "topohub.v1");
  ws.onopen = () => { S.ws = "open"; };
  ws.onclose = (e) => { if (!S.ws) S.ws = "refused " + e.code; };
})();
"started"`)
	q.waitJS("the stranger's verdicts", `!!(window.S.fetch && S.module && S.es && S.ws)`)
	if got := q.eval(`JSON.stringify([S.fetch, S.module, S.es, S.ws])`); got != `["refused","refused","refused","refused 1006"]` {
		t.Errorf("unlisted origin: %s", got)
	}
	// The spare ticket was not spent by the refused page.
	th.openSSE(th.sseURL(sseTopo)+"?ticket="+spare, nil).Close()
}

func TestBrowserNativeEventSourceSurvivesRestart(t *testing.T) {
	tickets := newTestTickets(t, 0)
	th := newTestHub(t, withTickets(tickets))
	id := th.newTopology()
	p := newPage(t)
	p.navigate(th.http.URL + "/")
	p.waitJS("the idle console", `document.readyState === "complete" && document.querySelector("#notice").textContent.includes("Paste a token")`)
	// A plain EventSource with one ticket, as a legacy page opens it; it
	// is never told to reconnect: the browser does it by itself.
	p.start(`
window.N = {got: [], tickets: 0, opens: 0};
(async () => {
  const r = await fetch("/api/v1/auth/sse-ticket", {method: "POST", headers: {Authorization: "Bearer " + ` + strconv.Quote(th.token()) + `}});
  N.tickets++;
  const {ticket} = await r.json();
  const es = new EventSource("/api/v1/topologies/` + id + `/events?ticket=" + encodeURIComponent(ticket));
  N.es = es;
  es.onopen = () => { N.opens++; };
  for (const name of ["snapshot", "status"]) {
    es.addEventListener(name, (e) => { const d = JSON.parse(e.data); N.got.push({name, id: e.lastEventId, resync: !!d.resync, status: d.status || "", note: (d.payload || {}).note || ""}); });
  }
})();
"started"`)
	p.waitJS("the first snapshot", `N.got.some(g => g.name === "snapshot" && !g.resync)`)
	th.publish("topology."+id+".status", `{"state":"active","note":"before"}`)
	p.waitJS("an event before the restart", `N.got.some(g => g.note === "before")`)
	if c := p.eval(`document.cookie`); strings.Contains(c, ResumeCookie) {
		t.Errorf("the resume cookie is readable by scripts: %q", c)
	}

	addr := th.http.Listener.Addr().String()
	th.stop()
	th.createTopology(id, "changed-while-down")
	th2 := newTestHub(t, withTickets(tickets), withPrefix(th.prefix), withAddr(addr))

	p.waitJS("the resync snapshot after the browser's own reconnect", `N.got.some(g => g.name === "snapshot" && g.resync && g.status === "changed-while-down")`)
	th2.publish("topology."+id+".status", `{"state":"active","note":"after"}`)
	p.waitJS("an event after the restart", `N.got.some(g => g.note === "after")`)
	if got := p.eval(`JSON.stringify({tickets: N.tickets, opens: N.opens, state: N.es.readyState})`); got != `{"tickets":1,"opens":2,"state":1}` {
		t.Errorf("want one ticket, two opens of the same EventSource, open now: %s", got)
	}
}
