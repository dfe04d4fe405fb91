package web

import (
	"io/fs"
	"os/exec"
	"strings"
	"testing"
)

// TestClientUnit runs the client library's unit tests with Node's built-in
// test runner, so `go test ./...` covers them.
func TestClientUnit(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is required for the client's unit tests (apt-get install nodejs); .ci/run installs it")
	}
	out, err := exec.Command(node, "--test", "topohub.test.js").CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "# fail 0") {
		t.Fatalf("node --test ran no test or hid a failure:\n%s", out)
	}
}

func TestEmbeddedFiles(t *testing.T) {
	for _, name := range []string{"index.html", "app.js", "style.css", "topohub.js"} {
		b, err := fs.ReadFile(Files, name)
		if err != nil || len(b) == 0 {
			t.Errorf("%s not embedded: %v", name, err)
		}
	}
	if _, err := fs.ReadFile(Files, "topohub.test.js"); err == nil {
		t.Error("tests are embedded and would be served")
	}
}
