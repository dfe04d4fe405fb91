package main

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

func TestDemoFlag(t *testing.T) {
	for _, args := range [][]string{{"--demo"}, {"-demo=true"}} {
		c, err := loadConfig(args, lookup(nil))
		if err != nil || !c.Demo {
			t.Errorf("%v: demo %v, err %v", args, c != nil && c.Demo, err)
		}
	}
	if c, err := loadConfig(nil, lookup(map[string]string{"TOPOHUB_DEMO": "true"})); err != nil || !c.Demo {
		t.Errorf("TOPOHUB_DEMO=true: %v", err)
	}
	if c, err := loadConfig(nil, lookup(nil)); err != nil || c.Demo {
		t.Errorf("demo is on by default (%v)", err)
	}
	// The simulator resets the keys of its topologies: never in a real Redis.
	env := map[string]string{"TOPOHUB_REDIS_URL": "redis://127.0.0.1:1", "TOPOHUB_JWT_SECRET": strings.Repeat("k", 32)}
	if err := run(context.Background(), []string{"--demo"}, lookup(env), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "embedded broker only") {
		t.Errorf("--demo with a Redis URL: err = %v", err)
	}
}

func TestConsoleURL(t *testing.T) {
	for _, c := range []struct {
		cfg  config
		want string
	}{
		{config{BasePath: "/api/v1"}, "http://h/#token=T"},
		{config{BasePath: "/api/v1/", Demo: true}, "http://h/?topology=demo&topology=demo-east&topology=demo-west#token=T"},
		{config{BasePath: "hub"}, "http://h/?base=%2Fhub#token=T"},
	} {
		if got := consoleURL(&c.cfg, "http://h", "T"); got != c.want {
			t.Errorf("%+v: %s, want %s", c.cfg, got, c.want)
		}
	}
}

// TestDemoConsoleInChromium is the newcomer's first minute: go run
// ./cmd/topohub --demo, open the printed console URL, and watch events
// arrive within 5 s without typing a redis-cli command.
func TestDemoConsoleInChromium(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s is required for browser tests (apt-get install chromium); .ci/run installs it", chromium)
	}
	t.Setenv("TMPDIR", t.TempDir()) // where the dev hub notes its broker for topohub-sim

	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan error, 1)
	go func() {
		exited <- run(ctx, []string{"--demo"}, lookup(map[string]string{"TOPOHUB_ADDR": "127.0.0.1:0"}), pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-exited; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	printed := map[string]string{}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	deadline := time.After(20 * time.Second)
	for printed["soak"] == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("stdout closed early; printed %v", printed)
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				printed[k] = strings.TrimSpace(v)
			}
		case <-deadline:
			t.Fatalf("demo instructions not printed within 20s; got %v", printed)
		}
	}
	go func() {
		for range lines {
		}
	}()
	console, err := url.Parse(printed["console"])
	if err != nil || console.Query()["topology"] == nil || !strings.HasPrefix(console.Fragment, "token=") {
		t.Fatalf("console line %q: want the demo topologies in the query and the token in the fragment", printed["console"])
	}
	if got := strings.Join(console.Query()["topology"], ","); got != strings.Join(demoTopologies, ",") {
		t.Errorf("console opens on %s, want %v", got, demoTopologies)
	}
	if !strings.Contains(printed["demo"], "demo-east") || !strings.Contains(printed["soak"], "topohub-sim --check") {
		t.Errorf("demo lines %q %q", printed["demo"], printed["soak"])
	}

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	tab, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		if t.Failed() {
			sctx, c := context.WithTimeout(tab, 5*time.Second)
			if text, err := chromedp.Run(sctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`)); err == nil {
				t.Logf("page text at failure:\n%s", text)
			}
			c()
		}
		cancelTab()
		cancelAlloc()
	})
	if err := chromedp.Do(tab, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if err := chromedp.Do(tab, chromedp.Navigate(console.String())); err != nil {
		t.Fatalf("navigate: %v", err)
	}
	opened := time.Now()
	// Every demo panel logs an event that is not a snapshot: live traffic.
	live := `["demo", "demo-east", "demo-west"].every(id => [...document.querySelectorAll('.panel')].some(p => p.dataset.topology === id &&
	  [...p.querySelectorAll('.log li')].some(li => li.dataset.event !== "snapshot" && li.dataset.event !== "resync" && li.dataset.event !== "error")))`
	if _, err := chromedp.Run(tab, chromedp.Poll[bool](live, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(5*time.Second))); err != nil {
		t.Fatalf("no live event in every demo panel within 5s of opening the console: %v", err)
	}
	t.Logf("live events in every panel %s after opening the console", time.Since(opened).Round(time.Millisecond))
	transport, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.querySelector("#transport").dataset.transport`))
	if err != nil || transport != "websocket" {
		t.Errorf("transport %q (%v), want websocket", transport, err)
	}
}
