package agent

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestAgentDoesNotImportPacker guards DESIGN.md's rule: the device binary
// never links the host-side packer.
func TestAgentDoesNotImportPacker(t *testing.T) {
	pkgs := []string{"./agent/..."}
	if _, err := os.Stat(repoRoot(t) + "/cmd/edgefleet-agent"); err == nil {
		pkgs = append(pkgs, "./cmd/edgefleet-agent")
	}
	cmd := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "github.com/edgefleet/edgefleet/packer" || strings.HasPrefix(p, "github.com/edgefleet/edgefleet/packer/") {
			t.Fatalf("the agent imports %s; the device binary must not link the packer", p)
		}
	}
}
