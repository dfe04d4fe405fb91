package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
)

// There is no Docker engine here, so the compose file, the Dockerfile and
// the README's configuration table are checked against the code instead.

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Ports       []string          `yaml:"ports"`
		Profiles    []string          `yaml:"profiles"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Command     []string          `yaml:"command"`
		Build       any               `yaml:"build"`
		Environment map[string]string `yaml:"environment"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func knownSettings() map[string]envFlag {
	out := map[string]envFlag{}
	for _, d := range flagDefs(&config{}) {
		out[d.env] = d
	}
	return out
}

func TestComposeFile(t *testing.T) {
	var cf composeFile
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "docker-compose.yml")), &cf); err != nil {
		t.Fatal(err)
	}
	redis, hubSvc := cf.Services["redis"], cf.Services["topohub"]
	if !regexp.MustCompile(`^redis:7(\.\d+)*-alpine$`).MatchString(redis.Image) {
		t.Errorf("redis image %q: want an official redis:7.x-alpine tag", redis.Image)
	}
	if redis.Healthcheck == nil || !strings.Contains(strings.Join(redis.Healthcheck.Test, " "), "redis-cli ping") {
		t.Error("redis has no redis-cli ping health check")
	}
	if hubSvc.Build == nil {
		t.Error("topohub service is not built from the Dockerfile")
	}
	if hubSvc.DependsOn["redis"].Condition != "service_healthy" {
		t.Error("topohub does not wait for a healthy redis")
	}
	if hubSvc.Healthcheck == nil || !strings.Contains(strings.Join(hubSvc.Healthcheck.Test, " "), "/readyz") {
		t.Error("topohub health check does not use /readyz")
	}
	known := knownSettings()
	for k := range hubSvc.Environment {
		if _, ok := known[k]; !ok {
			t.Errorf("compose sets %s, which topohub does not read", k)
		}
	}
	for _, k := range []string{"TOPOHUB_REDIS_URL", "TOPOHUB_JWT_SECRET", "TOPOHUB_ADDR"} {
		if hubSvc.Environment[k] == "" {
			t.Errorf("compose does not set %s", k)
		}
	}
	if u := hubSvc.Environment["TOPOHUB_REDIS_URL"]; !strings.HasPrefix(u, "redis://redis:") {
		t.Errorf("TOPOHUB_REDIS_URL %q does not name the redis service", u)
	}
	if s := hubSvc.Environment["TOPOHUB_JWT_SECRET"]; !strings.Contains(s, ":?") {
		t.Errorf("TOPOHUB_JWT_SECRET %q has a default; it must be required", s)
	}
}

// TestComposePath holds the README's compose walkthrough to the files: the
// secret from a documented .env that is never committed, Redis on
// loopback for redis-cli, and the optional demo producers on the same
// topologies as --demo.
func TestComposePath(t *testing.T) {
	var cf composeFile
	compose := readRepoFile(t, "docker-compose.yml")
	if err := yaml.Unmarshal([]byte(compose), &cf); err != nil {
		t.Fatal(err)
	}
	if p := cf.Services["redis"].Ports; len(p) != 1 || p[0] != "127.0.0.1:6379:6379" {
		t.Errorf("redis ports %v, want only 127.0.0.1:6379:6379 (loopback: it has no password)", p)
	}
	example := readRepoFile(t, ".env.example")
	documented := map[string]bool{}
	for _, line := range strings.Split(example, "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "#")
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "TOPOHUB_") {
			documented[k] = true
			if k == "TOPOHUB_JWT_SECRET" && v != "" {
				t.Errorf(".env.example holds a secret %q; it must be empty", v)
			}
		}
	}
	for _, m := range regexp.MustCompile(`\$\{(\w+)`).FindAllStringSubmatch(compose, -1) {
		if !documented[m[1]] {
			t.Errorf("compose reads ${%s}, which .env.example does not document", m[1])
		}
	}
	if !regexp.MustCompile(`(?m)^/?\.env$`).MatchString(readRepoFile(t, ".gitignore")) {
		t.Error(".gitignore does not ignore .env")
	}

	demo, ok := cf.Services["demo"]
	if !ok {
		t.Fatal("compose has no demo service")
	}
	if len(demo.Profiles) != 1 || demo.Profiles[0] != "demo" {
		t.Errorf("demo profiles %v: it must be optional (profile demo)", demo.Profiles)
	}
	if demo.Image != cf.Services["topohub"].Image || len(demo.Entrypoint) != 1 || demo.Entrypoint[0] != "/usr/local/bin/topohub-sim" {
		t.Errorf("demo runs %v from %s, want topohub-sim from the hub's image", demo.Entrypoint, demo.Image)
	}
	if df := readRepoFile(t, "Dockerfile"); !strings.Contains(df, "./cmd/topohub-sim") || !strings.Contains(df, "/out/topohub-sim") {
		t.Error("the Dockerfile does not build and install topohub-sim")
	}
	sim := readRepoFile(t, "cmd/topohub-sim/main.go")
	args := map[string]string{}
	for i := 0; i+1 < len(demo.Command); i += 2 {
		name := strings.TrimPrefix(demo.Command[i], "--")
		if !strings.Contains(sim, `"`+name+`"`) {
			t.Errorf("demo passes --%s, which topohub-sim does not define", name)
		}
		args[name] = demo.Command[i+1]
	}
	if args["ids"] != strings.Join(demoTopologies, ",") {
		t.Errorf("demo simulates %q, want the --demo topologies %v", args["ids"], demoTopologies)
	}
	if args["redis"] != cf.Services["topohub"].Environment["TOPOHUB_REDIS_URL"] {
		t.Errorf("demo publishes to %q, the hub reads %q", args["redis"], cf.Services["topohub"].Environment["TOPOHUB_REDIS_URL"])
	}
	readme := readRepoFile(t, "README.md")
	for _, step := range []string{".env.example", "docker compose up", "--profile demo", "docker compose exec -T topohub topohub token", "redis-cli -p 6379"} {
		if !strings.Contains(readme, step) {
			t.Errorf("the README's compose walkthrough lacks %q", step)
		}
	}
}

func TestDockerfileMatchesGoVersion(t *testing.T) {
	gomod := readRepoFile(t, "go.mod")
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	if m == nil {
		t.Fatal("no go line in go.mod")
	}
	df := readRepoFile(t, "Dockerfile")
	if !strings.Contains(df, "FROM golang:"+m[1]+"-") {
		t.Errorf("Dockerfile does not build with golang:%s", m[1])
	}
	if !strings.Contains(df, "./cmd/topohub") {
		t.Error("Dockerfile does not build ./cmd/topohub")
	}
}

func TestReadmeDocumentsEverySetting(t *testing.T) {
	readme := readRepoFile(t, "README.md")
	for env, d := range knownSettings() {
		def := "`" + d.def + "`"
		if d.def == "" {
			def = "(empty)"
		}
		row := regexp.MustCompile("(?m)^\\| `" + env + "` \\| ([^|]+) \\|")
		m := row.FindStringSubmatch(readme)
		if m == nil {
			t.Errorf("README has no configuration row for %s", env)
			continue
		}
		if strings.TrimSpace(m[1]) != def {
			t.Errorf("README gives %s the default %s, the code %s", env, strings.TrimSpace(m[1]), def)
		}
	}
	for _, cmd := range []string{"go run ./cmd/topohub", "go test -race ./..."} {
		if !strings.Contains(readme, cmd) {
			t.Errorf("README lacks %q", cmd)
		}
	}
	if ci := readRepoFile(t, ".ci/run"); !strings.Contains(ci, "go test -race ./...") {
		t.Error(".ci/run does not run the README's test command")
	}
}

// TestNothingPointsOutsideTheRepository: the wire contract is
// docs/protocol.md; no file may send a reader to a file outside the
// repository.
func TestNothingPointsOutsideTheRepository(t *testing.T) {
	outside := []string{"../" + "shared", "PROTOCOL" + ".md", "LEGACY" + ".md", "shared/" + "reference"}
	err := filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == ".git" || n == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(p) {
		case ".go", ".md", ".js", ".ts", ".yml", ".json", ".html", ".example":
		default:
			if n := d.Name(); n != "Dockerfile" && n != "run" {
				return nil // binaries built here, images
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, s := range outside {
			if strings.Contains(string(b), s) {
				t.Errorf("%s mentions %s", p, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	proto := readRepoFile(t, "docs/protocol.md")
	for _, part := range []string{"## 1. Topics", "## 2. Event names", "## 3. Event data", "## 4. Snapshot source", "## 5. Authentication", "## 6. Delivery", "## 7. SSE route", "## 8. WebSocket route"} {
		if !strings.Contains(proto, part) {
			t.Errorf("docs/protocol.md lacks %q", part)
		}
	}
}
