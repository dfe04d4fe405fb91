package sim

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DevBrokerFile is where a development hub (go run ./cmd/topohub with no
// TOPOHUB_REDIS_URL) notes the URL of its embedded broker, so that
// topohub-sim run beside it finds it without flags. It holds no secret.
func DevBrokerFile() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("topohub-dev-broker-%d.url", os.Getuid()))
}

// WriteDevBroker notes url in DevBrokerFile and returns the function that
// removes the note (if it is still this one).
func WriteDevBroker(url string) (remove func(), err error) {
	path := DevBrokerFile()
	if err := os.WriteFile(path, []byte(url+"\n"), 0o600); err != nil {
		return func() {}, err
	}
	return func() {
		if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == url {
			_ = os.Remove(path)
		}
	}, nil
}

// ReadDevBroker returns the URL a running development hub noted.
func ReadDevBroker() (string, error) {
	b, err := os.ReadFile(DevBrokerFile())
	if errors.Is(err, fs.ErrNotExist) {
		return "", errors.New("no --redis given and no development hub noted its broker in " + DevBrokerFile() + " (start `go run ./cmd/topohub`, or pass --redis redis://host:6379/0)")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
