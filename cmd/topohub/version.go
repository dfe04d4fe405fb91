package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"topohub/handlers"
)

// buildInfo reads what the Go toolchain stamped into the binary: the
// module version (a tag, or "(devel)"), the commit and whether the tree
// was modified, and the Go version.
func buildInfo() handlers.BuildInfo {
	b := handlers.BuildInfo{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if v := bi.Main.Version; v != "" {
		b.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				b.Revision += "-dirty"
			}
		}
	}
	return b
}

func printVersion(w io.Writer) error {
	b := buildInfo()
	_, err := fmt.Fprintf(w, "topohub %s commit %s %s\n", b.Version, b.Revision, b.GoVersion)
	return err
}
