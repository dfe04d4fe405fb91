package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestShortSecretRefused(t *testing.T) {
	env := map[string]string{"TOPOHUB_REDIS_URL": "redis://127.0.0.1:1", "TOPOHUB_JWT_SECRET": "too-short"}
	err := run(context.Background(), nil, lookup(env), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "at least 32 bytes") {
		t.Fatalf("err = %v, want a refusal naming the 32-byte minimum", err)
	}
}

func TestConfigFromFlagsAndEnv(t *testing.T) {
	env := map[string]string{"TOPOHUB_QUEUE_SIZE": "64", "TOPOHUB_STREAM_ROLES": "admin, ops", "TOPOHUB_KEEPALIVE": "3s"}
	c, err := loadConfig([]string{"-queue-size", "32"}, lookup(env))
	if err != nil {
		t.Fatal(err)
	}
	if c.QueueSize != 32 || c.Keepalive != 3*time.Second || strings.Join(c.StreamRoles, ",") != "admin,ops" || c.MaxConnsPerUser != 5 || c.BasePath != "/api/v1" {
		t.Fatalf("config %+v", c)
	}
	for k, v := range map[string]string{"TOPOHUB_QUEUE_SIZE": "0", "TOPOHUB_KEEPALIVE": "soon", "TOPOHUB_ALLOW_QUERY_TOKEN": "maybe"} {
		if _, err := loadConfig(nil, lookup(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: err = %v, want one naming the variable", k, v, err)
		}
	}
}

// TestDevModeBinary is the newcomer's first five minutes: build the
// binary, start it with no Redis configured, and follow what it prints.
func TestDevModeBinary(t *testing.T) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli is required (apt-get install redis-tools); .ci/run installs it")
	}
	bin := hubBinary(t)
	cmd := exec.Command(bin)
	cmd.Env = append(cleanEnv(), "TOPOHUB_ADDR=127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	printed := map[string]string{}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	deadline := time.After(30 * time.Second)
	for printed["stream"] == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("stdout closed early; stderr:\n%s", stderr.String())
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				printed[k] = strings.TrimSpace(v)
			}
		case <-deadline:
			t.Fatalf("dev-mode instructions not printed within 30s; got %v", printed)
		}
	}
	go func() { // keep draining
		for range lines {
		}
	}()
	token, hubURL, publish := printed["token"], printed["hub"], printed["publish"]
	if token == "" || hubURL == "" || !strings.HasPrefix(publish, "redis-cli -p ") {
		t.Fatalf("printed %v", printed)
	}
	if !strings.Contains(printed["stream"], "curl -N") || strings.Contains(printed["stream"], "?token=") {
		t.Errorf("stream line %q", printed["stream"])
	}
	if want := hubURL + "/#token=" + token; printed["console"] != want {
		t.Errorf("console line %q, want %q (the token in the fragment, never the query)", printed["console"], want)
	}
	if resp, err := http.Get(hubURL + "/"); err != nil || resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("console page: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hubURL+"/api/v1/topologies/demo/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: %d %s", resp.StatusCode, body)
	}
	r := bufio.NewReader(resp.Body)
	readUntil := func(prefix string) string {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading stream: %v", err)
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		}
	}
	if line := readUntil("event: "); line != "event: snapshot\n" {
		t.Fatalf("first event %q", line)
	}
	// The printed line, pasted into a shell as a newcomer would.
	if out, err := exec.CommandContext(ctx, "sh", "-c", publish).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("%s: %v %q (want 1 receiver: the hub)", publish, err, out)
	}
	if line := readUntil("event: "); line != "event: status\n" {
		// Seen once on a loaded CI machine (a second snapshot): say all
		// there is to know next time.
		data := readUntil("data: ")
		t.Fatalf("event %q (%s), want status; hub log:\n%s", line, strings.TrimSpace(data), stderr.String())
	}
	if line := readUntil("data: "); !strings.Contains(line, `"topic":"topology.demo.status"`) || !strings.Contains(line, `"payload":{"state":"degraded"}`) {
		t.Fatalf("data %q", line)
	}

	// SIGTERM: the stream ends and the process exits 0 within 5 s.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for Cleanup
		if err != nil {
			t.Fatalf("exit: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5s after SIGTERM")
	}
	if _, err := io.ReadAll(r); err != nil && !strings.Contains(err.Error(), "EOF") {
		t.Logf("stream ended with %v", err)
	}
	if strings.Contains(stderr.String(), token) {
		t.Error("the token appears in the logs")
	}
}

func lookup(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

func TestEmptyVariableTurnsACheckOff(t *testing.T) {
	c, err := loadConfig(nil, lookup(map[string]string{"TOPOHUB_JWT_ISSUER": "", "TOPOHUB_JWT_AUDIENCE": ""}))
	if err != nil {
		t.Fatal(err)
	}
	if c.JWTIssuer != "" || c.JWTAudience != "" || c.JWTType != "access" {
		t.Fatalf("issuer %q audience %q type %q", c.JWTIssuer, c.JWTAudience, c.JWTType)
	}
}

func TestRedisURLErrorHidesPassword(t *testing.T) {
	env := map[string]string{"TOPOHUB_REDIS_URL": "redis://user:s3cret@host:port/0", "TOPOHUB_JWT_SECRET": strings.Repeat("k", 32)}
	err := run(context.Background(), nil, lookup(env), io.Discard, io.Discard)
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
}

// cleanEnv is the test's environment without TOPOHUB_* settings.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOPOHUB_") {
			out = append(out, kv)
		}
	}
	return out
}
