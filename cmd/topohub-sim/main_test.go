package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"topohub/internal/redistest"
	"topohub/internal/sim"
)

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, func(string) (string, bool) { return "", false }, &out, &errOut)
	return code, out.String(), errOut.String()
}

// Without --redis the simulator publishes to the broker a development hub
// noted; it stops by itself and says what it sent.
func TestDefaultRedisIsTheDevBroker(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	id := redistest.UniqueID("cli-")
	if code, _, errOut := runCLI("--ids", id, "--duration", "100ms"); code != exitError || !strings.Contains(errOut, "go run ./cmd/topohub") {
		t.Errorf("no dev hub: exit %d, %q", code, errOut)
	}
	remove, err := sim.WriteDevBroker(pkgRedis.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	code, out, errOut := runCLI("--ids", id, "--duration", "500ms", "--rate", "40", "--traffic-rate", "20")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	m := regexp.MustCompile(`sent (\d+) messages in [0-9.]+s .* seed 1: enqueued \d+`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" || !strings.Contains(out, "traffic 10") || !strings.Contains(out, "at the end: "+id+" ") {
		t.Errorf("summary:\n%s", out)
	}
	if n, _ := pkgRedis.Client(t).Exists(context.Background(), sim.TopologyKey(sim.DefaultKeyPrefix, id)).Result(); n != 1 {
		t.Error("the topology was not created in the dev broker")
	}
}

func TestFlagsRefused(t *testing.T) {
	for _, args := range [][]string{
		{"--check", "--redis", "redis://127.0.0.1:1"},
		{"--duration", "0s", "--redis", "redis://127.0.0.1:1"},
		{"--redis", "http://nope"},
		{"--ids", "a.b", "--redis", pkgRedis.URL},
		{"extra"},
	} {
		if code, _, errOut := runCLI(args...); code != exitError || errOut == "" {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
}
