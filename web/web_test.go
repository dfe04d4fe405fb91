package web

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
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
	out, err := exec.Command(node, "--test", "topohub.test.js", "react.test.js").CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "# fail 0") || strings.Contains(string(out), "# pass 0\n") {
		t.Fatalf("node --test ran no test or hid a failure:\n%s", out)
	}
}

// TestTypes checks the hand-written topohub.d.ts and react.d.ts with
// tsc --noEmit against types.test.ts, through package.json's exports and
// with React's own types.
func TestTypes(t *testing.T) {
	tsc := testdataTool(t, "tsc")
	out, err := exec.Command(tsc, "--noEmit", "-p", "tsconfig.json").CombinedOutput()
	if err != nil {
		t.Fatalf("tsc --noEmit -p web/tsconfig.json: %v\n%s", err, out)
	}
}

// testdataTool returns the path of a binary of the test-only npm packages
// in testdata/ (TypeScript; React's builds sit beside it), or fails with
// how to install them.
func testdataTool(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "node_modules", ".bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing: install the test-only npm packages with `npm ci --prefix web/testdata` (.ci/run does it)", p)
	}
	return p
}

func TestEmbeddedFiles(t *testing.T) {
	for _, name := range []string{"index.html", "app.js", "style.css", "topohub.js", "react.js", "topohub.d.ts", "react.d.ts"} {
		b, err := fs.ReadFile(Files, name)
		if err != nil || len(b) == 0 {
			t.Errorf("%s not embedded: %v", name, err)
		}
	}
	for _, name := range []string{"topohub.test.js", "react.test.js", "types.test.ts", "testdata/package.json"} {
		if _, err := fs.ReadFile(Files, name); err == nil {
			t.Errorf("%s is embedded and would be served", name)
		}
	}
}
