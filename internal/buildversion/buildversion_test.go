package buildversion

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestStampedVersionWins(t *testing.T) {
	i := fromBuildInfo("1.4.0", &debug.BuildInfo{Main: debug.Module{Path: "github.com/edgefleet/edgefleet", Version: "v9.9.9"}})
	if i.Version != "1.4.0" || !strings.HasPrefix(i.String(), "1.4.0\n") || !strings.Contains(i.String(), "module    github.com/edgefleet/edgefleet v9.9.9") {
		t.Fatalf("%+v\n%s", i, i)
	}
}

func TestUnstampedTakesModuleVersionAndRevision(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/edgefleet/edgefleet", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "4663a28"}, {Key: "vcs.time", Value: "2026-12-01T18:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	i := fromBuildInfo("dev", bi)
	if i.Version != "1.2.3" || !strings.Contains(i.String(), "revision  4663a28 (2026-12-01T18:00:00Z) with local changes") {
		t.Fatalf("%+v\n%s", i, i)
	}
	bi.Main.Version = "(devel)"
	if i := fromBuildInfo("", bi); i.Version != "dev" {
		t.Fatalf("a (devel) build: version %q, want dev", i.Version)
	}
	if i := fromBuildInfo("dev", nil); i.Version != "dev" || !strings.Contains(i.String(), "revision  unknown") {
		t.Fatalf("no build info: %+v", i)
	}
}
