package policy

import (
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Name       string
	Deps       []string
	Imports    []string
	Standard   bool
	GoFiles    []string
}

func goList(t *testing.T, args ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	return pkgs
}

// Every package says what it is and what it promises.
func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range goList(t, "./...") {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment: add a doc.go saying what it does and what it promises about crashes, memory and untrusted input", p.ImportPath)
		}
	}
}

// The device binary stays small: no packer, no CLI frameworks, no
// compiler toolchain packages.
func TestAgentDependencies(t *testing.T) {
	pkgs := goList(t, "-deps", "./cmd/edgefleet-agent")
	if len(pkgs) == 0 {
		t.Fatal("go list returned nothing for ./cmd/edgefleet-agent")
	}
	forbidden := []string{
		"github.com/edgefleet/edgefleet/packer",
		"github.com/edgefleet/edgefleet/fleet",
		"github.com/spf13/cobra", "github.com/urfave/cli",
		"github.com/mochi-mqtt/server",
		"go/types", "go/parser",
		"github.com/rogpeppe/go-internal",
		"github.com/chromedp/chromedp", "github.com/chromedp/cdproto", // the dashboard's browser tests
		"net/http/httptest",
		"github.com/edgefleet/edgefleet/internal/testkit", "github.com/edgefleet/edgefleet/internal/emutest",
	}
	for _, p := range pkgs {
		for _, f := range forbidden {
			if p.ImportPath == f || strings.HasPrefix(p.ImportPath, f+"/") {
				t.Errorf("edgefleet-agent imports %s: the device binary must not (DESIGN.md: agent never imports the packer or heavy libraries)", p.ImportPath)
			}
		}
	}
}

// The agent's own code never imports net/http: mirror downloads go
// through agent/internal/httpget, which saves about 0.5 MB of the
// linux-armv6 binary (docs/BENCHMARKS.md, issue 9) by not linking
// http.Transport and HTTP/2. net/http itself is still in the dependency
// list, through paho.mqtt.golang -> gorilla/websocket (ws:// brokers),
// where only its request writing and response reading are linked.
func TestAgentDoesNotImportNetHTTP(t *testing.T) {
	pkgs := goList(t, "-deps", "./cmd/edgefleet-agent")
	if len(pkgs) == 0 {
		t.Fatal("go list returned nothing for ./cmd/edgefleet-agent")
	}
	for _, p := range pkgs {
		if !strings.HasPrefix(p.ImportPath, "github.com/edgefleet/edgefleet/") {
			continue
		}
		for _, imp := range p.Imports {
			if imp == "net/http" || strings.HasPrefix(imp, "net/http/") {
				t.Errorf("%s imports %s: the device agent fetches over HTTP with agent/internal/httpget (net/http's client costs ~0.5 MB on linux-armv6)", p.ImportPath, imp)
			}
		}
	}
}

// The power-cut suite's broken builds (build tags edgefleet_powercut_*:
// an agent without the staged file's fsync or the swap's directory fsync,
// internal/powercut) are never what ships: the default build compiles the
// syncing files, and no build input outside the suite names such a tag.
func TestShippedAgentHasNoPowercutTag(t *testing.T) {
	pkgs := goList(t, "./agent")
	if len(pkgs) != 1 {
		t.Fatalf("go list ./agent returned %d packages", len(pkgs))
	}
	files := strings.Join(pkgs[0].GoFiles, " ")
	for _, f := range []string{"powercut_sync.go", "powercut_dirsync.go"} {
		if !strings.Contains(" "+files+" ", " "+f+" ") {
			t.Errorf("the default build of the agent does not compile %s (its files: %s): the shipped agent must fsync what the power-cut suite's proof builds leave out", f, files)
		}
	}
	for _, f := range []string{"powercut_nosync.go", "powercut_nodirsync.go"} {
		if strings.Contains(" "+files+" ", " "+f+" ") {
			t.Errorf("the default build of the agent compiles %s, the power-cut suite's broken build: check its //go:build line", f)
		}
	}
	root := "../.."
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			switch rel {
			case ".git", ".tools", "internal/powercut", "node_modules":
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".md") || (strings.HasPrefix(rel, "agent/powercut_") && strings.HasSuffix(rel, ".go")) || rel == "internal/policy/policy_test.go" {
			return nil
		}
		if fi, err := d.Info(); err != nil || fi.Size() > 4<<20 {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("edgefleet_powercut_")) {
			t.Errorf("%s names a power-cut proof build tag (edgefleet_powercut_*): only internal/powercut may build the broken agent; a release or install script must never", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
