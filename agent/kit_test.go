package agent

// Test kit for the install-side tests: builds the sample app (testdata/apps/hello)
// and the test agent with `go build`, makes bundles with protocol only (never
// the packer), signs them with TEST-ONLY keys generated per run.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// TestMain removes the binaries the kit built.
func TestMain(m *testing.M) { testkit.Main(m) }

func repoRoot(t testing.TB) string { return testkit.RepoRoot(t) }

// goBuild builds pkg (relative to the repo root) for env with ldflags, once
// per test binary.
func goBuild(t testing.TB, pkg string, env []string, ldflags string) string {
	t.Helper()
	return testkit.GoBuild(t, testkit.Build{Pkg: pkg, Env: env, LDFlags: ldflags})
}

// target is a build target for hello.
type target = testkit.Target

var native = testkit.Native

// buildHello builds testdata/apps/hello at version for tg; extra ldflags
// may bake in failure switches (-X main.crash=1).
func buildHello(t testing.TB, tg target, version, extra string) string {
	return testkit.BuildHello(t, tg.Env(), version, extra)
}

// buildTestAgent builds agent/internal/testagent for tg.
func buildTestAgent(t testing.TB, tg target) string {
	return goBuild(t, "agent/internal/testagent", tg.Env(), "-s -w")
}

// kit is one simulated device: a config with app "hello" under its own
// directory, TEST-ONLY keys, a data dir.
type kit struct {
	t       testing.TB
	dir     string
	priv    protocol.PrivateKey
	pub     protocol.PublicKey
	cfg     *Config
	cfgPath string
	appPath string
}

func newKit(t testing.TB) *kit {
	t.Helper()
	return newKitIn(t, t.TempDir())
}

// newKitIn puts the app under appRoot (e.g. a small tmpfs).
func newKitIn(t testing.TB, appRoot string) *kit {
	t.Helper()
	dir := t.TempDir()
	pubPath, priv := testkit.Keys(t, dir)
	k := &kit{t: t, dir: dir, priv: priv, pub: testkit.Public(priv)}
	k.appPath = filepath.Join(appRoot, "opt", "hello", "bin", "hello")
	k.cfgPath = filepath.Join(dir, "agent.yaml")
	testkit.WriteAgentConfig(t, k.cfgPath, testkit.AgentConfig{DataDir: filepath.Join(dir, "data"), TrustedKeys: []string{pubPath},
		Apps: []testkit.AgentApp{{Name: "hello", Path: k.appPath, Args: []string{"--serve"}, Window: "1s", MaxBootsOnTrial: 2}}})
	cfg, err := LoadConfig(k.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	k.cfg = cfg
	return k
}

func (k *kit) open(opts Options) *Agent {
	k.t.Helper()
	a, err := Open(k.cfg, opts)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { a.Close() })
	return a
}

// spec describes a bundle to make; see testkit.Spec for the defaults.
type spec = testkit.Spec

// bundle writes a bundle signed with the kit's key to a file and returns
// its path.
func (k *kit) bundle(s spec) string {
	k.t.Helper()
	return testkit.BundleFile(k.t, k.dir, s, k.priv)
}

// bundleBytes is a bundle signed with the kit's key.
func (k *kit) bundleBytes(s spec) []byte {
	k.t.Helper()
	return testkit.Bundle(k.t, s, k.priv)
}

// snapshot is what "nothing changed" compares: the app's bytes and state.
type snapshot struct {
	exe, prev                string
	state, version, previous string
	sequence                 uint64
}

func (k *kit) snap(a *Agent) snapshot {
	k.t.Helper()
	s := snapshot{exe: fileSum(k.t, k.appPath), prev: fileSum(k.t, k.appPath+".prev")}
	st := appStatus(k.t, a, "hello")
	s.state, s.version, s.previous, s.sequence = st.State, st.Version, st.Previous, st.Sequence
	return s
}

func fileSum(t testing.TB, p string) string {
	s, err := fileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func appStatus(t testing.TB, a *Agent, app string) AppStatus {
	t.Helper()
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.App == app {
			return s
		}
	}
	t.Fatalf("no status for %s", app)
	return AppStatus{}
}

// install installs a bundle file and fails the test on error.
func (k *kit) install(a *Agent, path string) *Result {
	k.t.Helper()
	f, err := os.Open(path)
	if err != nil {
		k.t.Fatal(err)
	}
	defer f.Close()
	res, err := a.Install(t0ctx(), f, nil)
	if err != nil {
		k.t.Fatalf("install %s: %v", filepath.Base(path), err)
	}
	return res
}

// installCommitted installs the bundle s describes and commits it: the
// committed release most tests start from.
func (k *kit) installCommitted(a *Agent, s spec) {
	k.t.Helper()
	k.install(a, k.bundle(s))
	if err := a.Commit("hello"); err != nil {
		k.t.Fatalf("commit hello %s: %v", s.Version, err)
	}
}

func (k *kit) tryInstall(a *Agent, path string) error {
	f, err := os.Open(path)
	if err != nil {
		k.t.Fatal(err)
	}
	defer f.Close()
	_, err = a.Install(t0ctx(), f, nil)
	return err
}

// runVersion runs the binary at p with --version.
func runVersion(t testing.TB, p string) string {
	t.Helper()
	out, err := exec.Command(p, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", p, err)
	}
	return strings.TrimSpace(string(out))
}

// fakeCPU returns injected CPU facts.
func armv6CPU() *hardware.CPUFacts {
	c := hardware.CPUFactsFromAuxv("arm", map[uint64]uint64{hardware.AT_HWCAP: hardware.HWCAP_ARM_VFP}, "v6l")
	return &c
}

func dumpJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

var _ = io.Discard

func t0ctx() context.Context { return context.Background() }

func hashBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
