package agent

// Test kit for the install-side tests: builds the sample app (testdata/apps/hello)
// and the test agent with `go build`, makes bundles with protocol only (never
// the packer), signs them with TEST-ONLY keys generated per run.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
	"github.com/ulikunitz/xz"
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
type target struct{ GOARCH, GOARM, GOAMD64 string }

var native = target{GOARCH: runtime.GOARCH}

func (tg target) env() []string {
	env := []string{"GOOS=linux", "GOARCH=" + tg.GOARCH}
	if tg.GOARM != "" {
		env = append(env, "GOARM="+tg.GOARM)
	}
	if tg.GOARCH == "amd64" {
		v := tg.GOAMD64
		if v == "" {
			v = "v1"
		}
		env = append(env, "GOAMD64="+v)
	}
	return env
}

// buildHello builds testdata/apps/hello at version for tg; extra ldflags
// may bake in failure switches (-X main.crash=1).
func buildHello(t testing.TB, tg target, version, extra string) string {
	return testkit.BuildHello(t, tg.env(), version, extra)
}

// buildTestAgent builds agent/internal/testagent for tg.
func buildTestAgent(t testing.TB, tg target) string {
	return goBuild(t, "agent/internal/testagent", tg.env(), "-s -w")
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
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubText, err := pub.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	pubPath := filepath.Join(dir, "TEST-ONLY-release.pub")
	if err := os.WriteFile(pubPath, pubText, 0o644); err != nil {
		t.Fatal(err)
	}
	k := &kit{t: t, dir: dir, priv: priv, pub: pub}
	k.appPath = filepath.Join(appRoot, "opt", "hello", "bin", "hello")
	yaml := fmt.Sprintf(`device_id: test-device
data_dir: %s
trusted_keys: [%s]
apps:
  - name: hello
    path: %s
    args: ["--serve"]
    health:
      window: 1s
      max_boots_on_trial: 2
`, filepath.Join(dir, "data"), pubPath, k.appPath)
	k.cfgPath = filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(k.cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
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

// spec describes a bundle to make.
type spec struct {
	App      string
	Version  string
	Sequence uint64
	Target   target
	Binary   string // default: hello built for Target at Version
	Encoding string // default xz
	Expires  *time.Time
	Probe    *protocol.Probe // default: --version prints Version
	NoProbe  bool
	MinFree  int64
	Key      *protocol.PrivateKey
	Extra    string // extra ldflags for hello
	XZDict   int64  // declared payload.xz_dict_size (default: the 1 MiB the stream is written with)
	Profile  string
}

// bundle writes a signed bundle to a file and returns its path.
func (k *kit) bundle(s spec) string {
	k.t.Helper()
	b := k.bundleBytes(s)
	p := filepath.Join(k.dir, fmt.Sprintf("%s_%s_%d_%s%s.efb", s.App, s.Version, s.Sequence, s.Target.GOARCH, s.Target.GOARM+s.Target.GOAMD64))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		k.t.Fatal(err)
	}
	return p
}

func (k *kit) bundleBytes(s spec) []byte {
	k.t.Helper()
	t := k.t
	if s.App == "" {
		s.App = "hello"
	}
	if s.Target.GOARCH == "" {
		s.Target = native
	}
	if s.Binary == "" {
		s.Binary = buildHello(t, s.Target, s.Version, s.Extra)
	}
	if s.Encoding == "" {
		s.Encoding = protocol.EncodingXZ
	}
	if s.Profile == "" {
		s.Profile = "linux-" + s.Target.GOARCH
	}
	exe, err := os.ReadFile(s.Binary)
	if err != nil {
		t.Fatal(err)
	}
	m := manifestFor(t, s, exe)
	payload, p := encodePayload(t, s.Binary, exe, s.Encoding)
	m.Payload = p
	if s.XZDict != 0 {
		m.Payload.XZDictSize = s.XZDict
	}
	key := k.priv
	if s.Key != nil {
		key = *s.Key
	}
	raw, sig, err := protocol.SignManifest(m, key)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := protocol.WriteBundle(&out, raw, sig, bytes.NewReader(payload), int64(len(payload)), time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func manifestFor(t testing.TB, s spec, exe []byte) *protocol.Manifest {
	f, err := elf.NewFile(bytes.NewReader(exe))
	if err != nil {
		t.Fatalf("%s is not ELF: %v", s.Binary, err)
	}
	class := 32
	if f.Class == elf.ELFCLASS64 {
		class = 64
	}
	endian := "little"
	if f.Data == elf.ELFDATA2MSB {
		endian = "big"
	}
	sum := sha256hex(exe)
	m := &protocol.Manifest{
		Schema: protocol.SchemaVersion, App: s.App, Version: s.Version, Sequence: s.Sequence,
		Created: time.Unix(1700000000, 0).UTC(), Profile: s.Profile,
		Target: protocol.Target{GOOS: "linux", GOARCH: s.Target.GOARCH, GOARM: s.Target.GOARM, GOAMD64: s.Target.GOAMD64,
			ELF: protocol.ELF{Class: class, Machine: f.Machine.String(), Endian: endian}},
		Build:      protocol.Build{GoVersion: runtime.Version()},
		Executable: protocol.Executable{Size: int64(len(exe)), SHA256: sum},
		Expires:    s.Expires, MinFreeStorage: s.MinFree,
	}
	if s.Target.GOARCH == "amd64" && m.Target.GOAMD64 == "" {
		m.Target.GOAMD64 = "v1"
	}
	if !s.NoProbe {
		m.Probe = s.Probe
		if m.Probe == nil {
			m.Probe = &protocol.Probe{Args: []string{"--version"}, Expect: s.Version, Timeout: protocol.Duration(30 * time.Second)}
		}
	}
	return m
}

func sha256hex(b []byte) string { return hashBytes(b) }

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

var payloadCache sync.Map // binary path + encoding → encodedPayload

type encodedPayload struct {
	bytes []byte
	p     protocol.Payload
}

// encodePayload compresses (xz, 1 MiB dictionary) and describes a binary,
// once per binary: pure-Go xz is the slow part of making a bundle.
func encodePayload(t testing.TB, path string, exe []byte, encoding string) ([]byte, protocol.Payload) {
	key := path + "|" + encoding + "|" + hashBytes(exe)
	if v, ok := payloadCache.Load(key); ok {
		e := v.(encodedPayload)
		return e.bytes, e.p
	}
	payload := exe
	var dict int64
	if encoding == protocol.EncodingXZ {
		var buf bytes.Buffer
		w, err := xz.WriterConfig{DictCap: 1 << 20}.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(exe)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		payload = buf.Bytes()
		dict = 1 << 20
	}
	p, err := protocol.DescribePayload(bytes.NewReader(payload), encoding, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	p.XZDictSize = dict
	payloadCache.Store(key, encodedPayload{payload, p})
	return payload, p
}
