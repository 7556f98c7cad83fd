package policy

import (
	"encoding/json"
	"io"
	"os/exec"
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
