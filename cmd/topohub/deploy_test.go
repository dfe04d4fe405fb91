package main

import (
	"os"
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
