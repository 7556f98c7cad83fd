// Package buildversion says which build of a program is running: the
// version stamped at release time (-X main.version=...) or else the module
// version Go recorded (go install module@v1.2.3; a pseudo-version for a
// build in a git checkout, Go 1.24+), and the VCS revision. Standard
// library only: the device agent uses it. It reads only the running
// binary's own build information.
package buildversion

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info is what `edgefleet version` and `edgefleet-agent version` print.
type Info struct {
	// Version is the stamped version, else the module's (without the v),
	// else "dev".
	Version   string `json:"version"`
	Module    string `json:"module,omitempty"`
	ModuleVer string `json:"module_version,omitempty"`
	Revision  string `json:"vcs_revision,omitempty"`
	Time      string `json:"vcs_time,omitempty"`
	Modified  bool   `json:"vcs_modified,omitempty"`
	Go        string `json:"go"`
	Platform  string `json:"platform"`
}

// Read returns the running program's Info; stamped is its -X version
// variable ("dev" or "" when not stamped).
func Read(stamped string) Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(stamped, bi)
}

func fromBuildInfo(stamped string, bi *debug.BuildInfo) Info {
	i := Info{Version: stamped, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		i.Module, i.ModuleVer = bi.Main.Path, bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				i.Revision = s.Value
			case "vcs.time":
				i.Time = s.Value
			case "vcs.modified":
				i.Modified = s.Value == "true"
			}
		}
	}
	if i.Version == "" || i.Version == "dev" {
		i.Version = "dev"
		if v := i.ModuleVer; v != "" && v != "(devel)" {
			i.Version = strings.TrimPrefix(v, "v")
		}
	}
	return i
}

// String is the multi-line form: the version first, alone on its line.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", i.Version)
	if i.Module != "" {
		mv := i.ModuleVer
		if mv == "" {
			mv = "(devel)"
		}
		fmt.Fprintf(&b, "module    %s %s\n", i.Module, mv)
	}
	if i.Revision != "" {
		rev := i.Revision
		if i.Time != "" {
			rev += " (" + i.Time + ")"
		}
		if i.Modified {
			rev += " with local changes"
		}
		fmt.Fprintf(&b, "revision  %s\n", rev)
	} else {
		fmt.Fprintf(&b, "revision  unknown (built outside a git checkout, or with -buildvcs=false)\n")
	}
	fmt.Fprintf(&b, "go        %s %s\n", i.Go, i.Platform)
	return b.String()
}
