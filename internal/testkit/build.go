package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// RepoRoot is the module root: the nearest directory at or above the
// working directory (a test's package directory) that holds go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod at or above the working directory; run the tests from inside the module")
		}
		dir = parent
	}
}

// Build is one `go build -trimpath` of a package of this module.
type Build struct {
	// Pkg is the package directory relative to the repo root, e.g.
	// "cmd/edgefleet-agent".
	Pkg string
	// Env is added to the environment after CGO_ENABLED=0 (a later entry
	// wins, so "CGO_ENABLED=1" turns cgo back on), e.g. GOOS, GOARCH,
	// GOARM, GOAMD64. Empty means the host's platform.
	Env []string
	// LDFlags is passed as -ldflags (e.g. "-s -w -X main.version=1.0.0").
	LDFlags string
	// Flags are further go build flags (e.g. "-race").
	Flags []string
}

func (b Build) key() string {
	return strings.Join([]string{b.Pkg, strings.Join(b.Env, ","), b.LDFlags, strings.Join(b.Flags, " ")}, "|")
}

type buildResult struct {
	once sync.Once
	path string
	err  error
}

var builds struct {
	mu   sync.Mutex
	dir  string
	done map[string]*buildResult
}

// GoBuild builds b once per test process (later calls with the same Build
// return the same path) and returns the binary's path.
func GoBuild(t testing.TB, b Build) string {
	t.Helper()
	return GoBuildAll(t, b)[0]
}

// GoBuildAll builds each of bs once per test process, concurrently, and
// returns their paths in order. It fails t if any build fails.
func GoBuildAll(t testing.TB, bs ...Build) []string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("SKIP: the go command is not on PATH; these tests build binaries with it (scripts/test.sh runs with Go installed)")
	}
	root := RepoRoot(t)
	builds.mu.Lock()
	if builds.dir == "" {
		d, err := os.MkdirTemp("", "edgefleet-testkit-")
		if err != nil {
			builds.mu.Unlock()
			t.Fatal(err)
		}
		builds.dir = d
		builds.done = map[string]*buildResult{}
	}
	rs := make([]*buildResult, len(bs))
	for i, b := range bs {
		k := b.key()
		if builds.done[k] == nil {
			builds.done[k] = &buildResult{path: filepath.Join(builds.dir, fmt.Sprintf("bin-%d", len(builds.done)))}
		}
		rs[i] = builds.done[k]
	}
	builds.mu.Unlock()
	var wg sync.WaitGroup
	for i, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rs[i]
			r.once.Do(func() {
				args := append([]string{"build", "-trimpath", "-ldflags", b.LDFlags, "-o", r.path}, b.Flags...)
				cmd := exec.Command("go", append(args, "./"+b.Pkg)...)
				cmd.Dir = root
				cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), b.Env...)
				if out, err := cmd.CombinedOutput(); err != nil {
					r.err = fmt.Errorf("go build %s %v: %w\n%s", b.Pkg, b.Env, err, out)
				}
			})
		}()
	}
	wg.Wait()
	paths := make([]string, len(bs))
	for i, r := range rs {
		if r.err != nil {
			t.Fatal(r.err)
		}
		paths[i] = r.path
	}
	return paths
}

// BuildHello builds the sample app testdata/apps/hello at version for env
// (see Build.Env); extra ldflags may bake in failure switches
// ("-X main.crash=1").
func BuildHello(t testing.TB, env []string, version, extra string) string {
	t.Helper()
	return GoBuild(t, Build{Pkg: "testdata/apps/hello", Env: env, LDFlags: strings.TrimSpace("-s -w -X main.version=" + version + " " + extra)})
}

// Main runs the tests and removes the binaries GoBuild made; call it from
// TestMain: func TestMain(m *testing.M) { testkit.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	builds.mu.Lock()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	builds.mu.Unlock()
	os.Exit(code)
}
