package handlers

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Debian's nginx (installed by .ci/run) in front of two hub instances,
// configured with exactly the block of docs/operations.md: only its
// listen and upstream addresses are replaced by loopback ports.

const nginxPath = "/usr/sbin/nginx"

// operationsNginxConf is the ```nginx block of docs/operations.md.
func operationsNginxConf(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```nginx\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(m) != 1 {
		t.Fatalf("docs/operations.md has %d nginx blocks, want 1", len(m))
	}
	return m[0][1]
}

// freePort returns a loopback port nothing listens on (now).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNginx runs nginx in the foreground with site (the doc's block)
// inside the least an unprivileged nginx needs: its own pid, logs and
// temp paths, one process. It returns nginx's base URL.
func startNginx(t *testing.T, site string) string {
	t.Helper()
	if _, err := os.Stat(nginxPath); err != nil {
		t.Fatalf("%s is required (apt-get install nginx); .ci/run installs it", nginxPath)
	}
	dir := t.TempDir()
	port := freePort(t)
	site, n := replaceOnce(site, "listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", port))
	if n != 1 {
		t.Fatalf("the doc's block has %d \"listen 80;\" lines, want 1", n)
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 256; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, site)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginxPath, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "error.log")); err == nil {
				t.Logf("nginx error.log:\n%s", b)
			}
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitFor(t, 10*time.Second, "nginx to answer", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("nginx exited: %v", err)
		default:
		}
		resp, err := noKeepAlive.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}

func replaceOnce(s, old, repl string) (string, int) {
	return strings.Replace(s, old, repl, 1), strings.Count(s, old)
}

func TestBrowserBehindNginx(t *testing.T) {
	var logsA, logsB syncBuffer
	tickets := newTestTickets(t, 0)
	edge := func(logs *syncBuffer) hubOption {
		return withConfig(func(c *Config) {
			c.Tickets = tickets
			c.TrustedProxies = []string{"127.0.0.1/32"}
			// Keepalives and the pong wait far below nginx's 60 s, so
			// that a proxy that held them back would be seen: no pong
			// within 1 s drops the WebSocket.
			c.Keepalive = 200 * time.Millisecond
			c.WriteTimeout = time.Second
			c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})) // health checks log at debug
		})
	}
	a := newTestHub(t, edge(&logsA))
	b := newTestHub(t, edge(&logsB), withPrefix(a.prefix))
	site := operationsNginxConf(t)
	for i, th := range []*testHub{a, b} {
		var n int
		site, n = replaceOnce(site, fmt.Sprintf("server 10.0.0.1%d:8080;", i+1), "server "+th.http.Listener.Addr().String()+";")
		if n != 1 {
			t.Fatalf("the doc's upstream lacks server 10.0.0.1%d:8080", i+1)
		}
	}
	proxy := startNginx(t, site)
	wsTopo, sseTopo := a.newTopology(), a.newTopology()

	// A page loaded through nginx: the WebSocket, not the fallback, and
	// events over both transports within 1 s of the PUBLISH.
	p := newPage(t)
	p.navigate(proxy + "/")
	p.settle("the console through nginx", `document.readyState === "complete" && document.querySelector("#notice").textContent.includes("Paste a token")`)
	p.start(edgeScript(proxy, a.token(), wsTopo, sseTopo))
	p.waitJS("the WebSocket through nginx", `window.E.hub && E.hub.state === "open" && E.hub.transport === "websocket"`)
	p.waitJS("the WebSocket snapshot", `E.ws.some(g => g.name === "snapshot")`)
	p.waitJS("the EventSource snapshot", `E.sse.some(g => g.name === "snapshot")`)
	arrivesWithin(t, p, a, "ws", wsTopo, "ws-via-nginx", time.Second)
	arrivesWithin(t, p, a, "sse", sseTopo, "sse-via-nginx", time.Second)

	// Keepalives pass: an SSE stream read through nginx sees keepalive
	// comments as they are written, and meanwhile the page's WebSocket,
	// which the hub drops if a pong is 1 s late, stays the one socket.
	s := a.openSSE(proxy+"/api/v1/topologies/"+sseTopo+"/events", bearer(a.token(claim("uuid", "user-2"))))
	for n := 0; n < 8; {
		if strings.HasPrefix(s.next(), ":") {
			n++
		}
	}
	s.Close()
	arrivesWithin(t, p, a, "ws", wsTopo, "ws-after-keepalives", time.Second)
	if got := p.eval(`JSON.stringify({sockets: E.sockets, state: E.hub.state, esErrors: E.esErrors, failures: E.failures})`); got != `{"sockets":1,"state":"open","esErrors":0,"failures":[]}` {
		t.Errorf("after the keepalives: %s, want one WebSocket still open, no EventSource error", got)
	}

	// A forged X-Forwarded-For is not believed: through nginx it is
	// overwritten with the peer nginx saw; sent to an instance directly by
	// a peer that is not a trusted proxy it is ignored.
	forged := http.Header{"X-Forwarded-For": {"6.6.6.6"}}
	for range 2 { // both upstreams, round robin
		send(t, noKeepAlive, http.MethodGet, proxy+"/healthz?via=nginx", forged)
	}
	send(t, clientFrom("127.0.0.2"), http.MethodGet, a.http.URL+"/healthz?via=direct", forged)
	waitFor(t, 5*time.Second, "the direct request's log line", func() bool { return strings.Contains(logsA.String(), `"remote":"127.0.0.2"`) })
	all := logsA.String() + logsB.String()
	if strings.Contains(all, "6.6.6.6") {
		t.Errorf("a forged X-Forwarded-For reached the log:\n%s", all)
	}
	// Both instances served (nginx balances over the doc's upstream).
	for name, l := range map[string]*syncBuffer{"first": &logsA, "second": &logsB} {
		if !strings.Contains(l.String(), `"msg":"http request"`) {
			t.Errorf("the %s instance served nothing", name)
		}
	}
}
