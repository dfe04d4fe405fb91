package handlers

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser tests: Debian's headless Chromium (installed by .ci/run) drives
// the embedded console and a legacy EventSource page against a hub wired
// to a real redis-server.

const chromiumPath = "/usr/bin/chromium"

// page is one browser tab for one test.
type page struct {
	t   *testing.T
	ctx context.Context
}

// newPage starts Chromium with the flags this machine's closed network
// needs. On failure it saves a screenshot (and logs the page's text).
func newPage(t *testing.T) *page {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s is required for browser tests (apt-get install chromium); .ci/run installs it", chromiumPath)
	}
	shots := os.Getenv("TOPOHUB_SCREENSHOT_DIR")
	if shots == "" {
		shots = t.TempDir()
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	p := &page{t: t, ctx: ctx}
	t.Cleanup(func() {
		if t.Failed() {
			p.saveScreenshot(filepath.Join(shots, sanitize(t.Name())+".png"))
		}
		cancelTab()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return p
}

func sanitize(name string) string {
	out := []rune(name)
	for i, r := range out {
		if r == '/' || r == ' ' {
			out[i] = '_'
		}
	}
	return string(out)
}

func (p *page) saveScreenshot(path string) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`)); err == nil {
		p.t.Logf("page text at failure:\n%s", text)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(90))
	if err != nil {
		p.t.Logf("screenshot failed: %v", err)
		return
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		p.t.Logf("screenshot not saved: %v", err)
		return
	}
	p.t.Logf("screenshot saved to %s", path)
}

func (p *page) navigate(u string) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, chromedp.Navigate(u)); err != nil {
		p.t.Fatalf("navigate: %v", err)
	}
}

// waitJS polls a JavaScript predicate until it is true (20 s at most).
func (p *page) waitJS(what, expr string) {
	p.t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[bool](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		p.t.Fatalf("waiting for %s: %v", what, err)
	}
}

func (p *page) eval(expr string) string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// JS predicates over the console's DOM.
func badgeIs(kind string) string {
	return fmt.Sprintf(`document.querySelector("#transport").dataset.transport === %q`, kind)
}

func panelLogHas(topology, event, text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('.panel[data-topology=%q] .log li')].some(li => li.dataset.event === %q && li.textContent.includes(%q))`, topology, event, text)
}

func panelStatusIs(topology, status string) string {
	return fmt.Sprintf(`(document.querySelector('.panel[data-topology=%q] .status') || {}).textContent === %q`, topology, status)
}

// inFlightIs compares a panel's in-flight list, as "id:state,...".
func inFlightIs(topology, want string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('.panel[data-topology=%q] .in-flight li[data-mutation]')].map(li => li.dataset.mutation + ":" + li.querySelector(".state").dataset.state).join(",") === %q`, topology, want)
}

func consoleURL(th *testHub, token string, topologies []string, extra url.Values) string {
	q := url.Values{}
	for _, id := range topologies {
		q.Add("topology", id)
	}
	for k, v := range extra {
		q[k] = v
	}
	return th.http.URL + "/?" + q.Encode() + "#token=" + token
}

func TestBrowserConsoleOverOneWebSocket(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	a, b := th.newTopology(), th.newTopology()
	th.addMutation(a, "m1", `{"id":"m1","topology_id":"`+a+`","op":"add_decky","payload":{},"state":"pending","requested_at":"2026-11-28T10:00:00+00:00","applied_at":null,"reason":null}`)
	p := newPage(t)
	p.navigate(consoleURL(th, th.token(), []string{a, b}, nil))

	p.waitJS("the WebSocket badge", badgeIs("websocket"))
	p.waitJS("snapshot of A", panelLogHas(a, "snapshot", "1 in flight"))
	p.waitJS("A's in-flight list", inFlightIs(a, "m1:pending"))
	p.waitJS("snapshot of B", panelLogHas(b, "snapshot", "0 in flight"))
	if got := p.eval(`document.querySelector("#transport").textContent`); got != "WebSocket" {
		t.Errorf("badge reads %q", got)
	}
	if got := p.eval(`location.hash`); got != "" {
		t.Errorf("the token stays in the address bar: %q", got)
	}
	waitFor(t, 10*time.Second, "one connection for both topologies", func() bool { return th.hub.Clients() == 1 })

	th.publish("topology."+a+".status", `{"v":1,"id":"x","type":"","ts":1764300000.5,"payload":{"state":"degraded","note":"only-for-a"}}`)
	th.publish("decky.web1.service_added", `{"payload":{"decky_name":"web1","service_name":"ssh","topology_id":"`+b+`","services":["ssh"]}}`)
	p.waitJS("A's status event", panelLogHas(a, "status", "only-for-a"))
	p.waitJS("A's status pill", panelStatusIs(a, "degraded"))
	p.waitJS("B's decky event", panelLogHas(b, "decky.service_added", "ssh"))

	// The in-flight list follows mutation events between snapshots.
	th.publish("topology."+b+".mutation.enqueued", `{"type":"enqueued","payload":{"mutation_id":"m9","op":"remove_decky","payload":{}}}`)
	p.waitJS("m9 pending in B", inFlightIs(b, "m9:pending"))
	th.publish("topology."+b+".mutation.applying", `{"type":"applying","payload":{"mutation_id":"m9","op":"remove_decky","payload":"{}"}}`)
	p.waitJS("m9 applying in B", inFlightIs(b, "m9:applying"))
	th.publish("topology."+a+".mutation.applied", `{"type":"applied","payload":{"mutation_id":"m1","op":"add_decky"}}`)
	th.publish("topology."+b+".mutation.failed", `{"type":"failed","payload":{"mutation_id":"m9","op":"remove_decky","reason":"MutationError: boom"}}`)
	p.waitJS("A's list empty", inFlightIs(a, ""))
	p.waitJS("B's list empty", inFlightIs(b, ""))
	if leaked := p.eval(`String(document.querySelector('.panel[data-topology="` + b + `"]').textContent.includes("only-for-a"))`); leaked != "false" {
		t.Error("A's event shown in B's panel")
	}
}

func TestBrowserFallsBackToSSE(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)), withConfig(func(c *Config) { c.DisableWebSocket = true }))
	a, b := th.newTopology(), th.newTopology()
	p := newPage(t)
	p.navigate(consoleURL(th, th.token(), []string{a, b}, url.Values{"initialBackoff": {"50"}, "maxBackoff": {"200"}}))

	p.waitJS("the SSE fallback badge", badgeIs("sse"))
	p.waitJS("snapshot of A", panelLogHas(a, "snapshot", "status active"))
	p.waitJS("snapshot of B", panelLogHas(b, "snapshot", "status active"))
	th.publish("topology."+a+".mutation.applied", `{"type":"applied","payload":{"mutation_id":"m7","op":"add_decky"}}`)
	th.publish("topology."+b+".mutation.failed", `{"type":"failed","payload":{"mutation_id":"m8","op":"add_decky","reason":"MutationError: boom"}}`)
	p.waitJS("A's event over SSE", panelLogHas(a, "mutation.applied", "m7"))
	p.waitJS("B's event over SSE", panelLogHas(b, "mutation.failed", "MutationError"))
	if got := p.eval(`document.querySelector("#transport").textContent`); got != "SSE fallback" {
		t.Errorf("badge reads %q", got)
	}
}

func TestBrowserReconnectsAfterHubRestart(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	a := th.newTopology()
	p := newPage(t)
	p.navigate(consoleURL(th, th.token(), []string{a}, url.Values{
		"initialBackoff": {"100"}, "maxBackoff": {"400"}, "retryWebSocketAfter": {"1000"},
	}))
	p.waitJS("the WebSocket badge", badgeIs("websocket"))
	p.waitJS("snapshot", panelLogHas(a, "snapshot", "status active"))

	addr := th.http.Listener.Addr().String()
	th.stop()
	// While the hub is down the topology changes; the event is lost to
	// the page, and the resync snapshot must cover it.
	th.createTopology(a, "degraded-while-down")
	th.publish("topology."+a+".status", `{"state":"degraded-while-down"}`)

	th2 := newTestHub(t, withTickets(newTestTickets(t, 0)), withPrefix(th.prefix), withAddr(addr))
	p.waitJS("the resync snapshot", panelLogHas(a, "resync", "degraded-while-down"))
	p.waitJS("status from the resync", panelStatusIs(a, "degraded-while-down"))
	th2.publish("topology."+a+".status", `{"state":"active","note":"after-restart"}`)
	p.waitJS("an event after the restart", panelLogHas(a, "status", "after-restart"))
	p.waitJS("the WebSocket again", badgeIs("websocket"))
}

func TestBrowserLegacyEventSource(t *testing.T) {
	th := newTestHub(t, withTickets(newTestTickets(t, 0)))
	id := th.newTopology()
	p := newPage(t)
	// Any HTML page of the hub's origin will do (a JSON one would be
	// replaced by Chromium's JSON viewer, taking the script's context
	// with it): the console, which without a token opens nothing.
	p.navigate(th.http.URL + "/")
	p.waitJS("the idle console", `document.readyState === "complete" && document.querySelector("#notice").textContent.includes("Paste a token")`)
	// The legacy client, as docs/protocol.md §3 describes it: a ticket, then a plain
	// EventSource with its listener set.
	script := `
window.legacy = [];
(async () => {
  const r = await fetch("/api/v1/auth/sse-ticket", {method: "POST", headers: {Authorization: "Bearer " + ` + strconv.Quote(th.token()) + `}});
  const {ticket} = await r.json();
  const es = new EventSource("/api/v1/topologies/` + id + `/events?ticket=" + encodeURIComponent(ticket));
  for (const name of ["snapshot", "status", "mutation.enqueued", "mutation.applying", "mutation.applied",
                      "mutation.failed", "decky.service_added", "decky.service_removed"]) {
    es.addEventListener(name, (e) => {
      const d = JSON.parse(e.data);
      window.legacy.push({name, id: e.lastEventId, topic: d.topic || "", ts: typeof d.ts, topology: d.topology_id || ""});
    });
  }
})();
"started"`
	if got := p.eval(script); got != "started" {
		t.Fatalf("script: %q", got)
	}
	p.waitJS("snapshot", `window.legacy.some(e => e.name === "snapshot" && e.topology === "`+id+`")`)
	th.publish("topology."+id+".mutation.applied", `{"v":1,"id":"0123456789abcdef0123456789abcdef","type":"applied","ts":1764300000.123,"payload":{"mutation_id":"m1","op":"add_decky"}}`)
	th.publish("decky.host:web1.service_added", `{"v":1,"id":"0123456789abcdef0123456789abcdef","type":"","ts":1764300001.5,"payload":{"decky_name":"host:web1","service_name":"http","topology_id":"`+id+`","services":["http"]}}`)
	p.waitJS("mutation.applied", `window.legacy.some(e => e.name === "mutation.applied" && e.ts === "number" && e.topic === "topology.`+id+`.mutation.applied" && e.id !== "")`)
	p.waitJS("decky.service_added", `window.legacy.some(e => e.name === "decky.service_added" && e.ts === "number")`)
}
