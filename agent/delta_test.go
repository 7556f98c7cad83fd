package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/selfupdate"

	differ "github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
	"github.com/edgefleet/edgefleet/protocol/bsdiff"
)

// bundleExe verifies a full bundle and returns its manifest and executable.
func bundleExe(t testing.TB, k *kit, path string) (*protocol.Manifest, []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, protocol.NewKeyring(k.pub))
	if err != nil {
		t.Fatal(err)
	}
	exe, err := b.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bs, err := io.ReadAll(exe)
	if err != nil {
		t.Fatal(err)
	}
	return b.Manifest, bs
}

// deltaBundle writes a delta bundle from the executable of the bundle at
// base to the release at full, signed with the kit's key, the way the
// packer makes one (packer/delta.go; the packer itself is not used
// here). patch, when set, replaces the real patch (a hostile but validly
// signed delta); entries is then its control entry count.
func deltaBundle(t testing.TB, k *kit, base, full string, patch []byte, entries int64) string {
	t.Helper()
	_, old := bundleExe(t, k, base)
	fm, nw := bundleExe(t, k, full)
	if patch == nil {
		p, st, err := differ.Diff(old, nw, differ.Options{})
		if err != nil {
			t.Fatal(err)
		}
		patch, entries = p, st.ControlEntries
	}
	pl, err := protocol.DescribePayload(bytes.NewReader(patch), protocol.EncodingNone, fm.Payload.ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	pl.Encoding = protocol.EncodingBSDiff
	m := *fm
	m.Payload = pl
	bm, _ := bundleExe(t, k, base)
	m.Delta = &protocol.Delta{Format: protocol.DeltaFormatBSDiff40, BaseSize: int64(len(old)), BaseSHA256: bm.Executable.SHA256, BaseVersion: bm.Version,
		FullPayloadSHA256: fm.Payload.SHA256, ControlEntries: entries, MaxBzip2Level: 5}
	raw, sig, err := protocol.SignManifest(&m, k.priv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(full), ".efb")+".from-"+bm.Version+".efb")
	if err := protocol.WriteBundleFile(path, raw, sig, bytes.NewReader(patch), pl.Size, m.Created); err != nil {
		t.Fatal(err)
	}
	return path
}

// A delta sideloaded onto the device whose executable is its base installs
// like the full release: the same bytes at the path as the full v2, and
// as minio/selfupdate's patcher makes from the same patch; then the usual
// trial and commit.
func TestDeltaSideloadInstalls(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 2, Extra: "-X main.healthFail="})
	k.install(a, v1)
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	d := deltaBundle(t, k, v1, v2, nil, 0)
	res := k.install(a, d)
	if res.Version != "1.1.0" || res.Previous != "1.0.0" {
		t.Fatalf("delta install: %+v", res)
	}
	_, want := bundleExe(t, k, v2)
	got, err := os.ReadFile(k.appPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the delta's result at the app path differs from the full release's executable")
	}
	_, old := bundleExe(t, k, v1)
	f, _ := os.Open(d)
	defer f.Close()
	b, err := protocol.OpenBundle(f, protocol.NewKeyring(k.pub))
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := b.Payload()
	patch, _ := io.ReadAll(pr)
	var ref bytes.Buffer
	if err := selfupdate.NewBSDiffPatcher().Patch(bytes.NewReader(old), &ref, bytes.NewReader(patch)); err != nil || !bytes.Equal(ref.Bytes(), want) {
		t.Fatalf("minio/selfupdate's patcher on the same patch: %v", err)
	}
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	if v := runVersion(t, k.appPath); v != "1.1.0" {
		t.Fatalf("runs %s", v)
	}
	assertNoLeftovers(t, k)
}

// Validly signed but hostile deltas, and deltas for another base, are
// refused with ErrDelta and change nothing: not the binary, not .prev,
// not the recorded state, no file left beside the app.
func TestDeltaRefusals(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	v0 := k.bundle(spec{Version: "0.9.0", Sequence: 1})
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 2})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 3})
	k.install(a, v1)
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	fm, nw := bundleExe(t, k, v2)
	size := fm.Executable.Size
	z := func(n int64) []byte { return make([]byte, n) }
	hostile := func(ctrl []differ.Control, diff, extra []byte, header int64) []byte {
		p, err := differ.Assemble(ctrl, diff, extra, header, differ.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	_ = nw
	cases := []struct {
		name  string
		delta string
		msg   string
	}{
		{"base is another version", deltaBundle(t, k, v0, v2, nil, 0), "the installed one is"},
		{"seek before the base", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Seek: -4096}, {Add: size}}, z(size), nil, size), 2), "outside the"},
		{"read past the base", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Seek: size - 10}, {Add: size}}, z(size), nil, size), 2), "outside the"},
		{"output past the signed size", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Add: 0, Copy: size + 1}}, nil, z(size+1), size), 1), "past the signed result size"},
		{"header size differs", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Copy: size + 1}}, nil, z(size+1), size+1), 1), "the signed result size is"},
		{"huge control values", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Add: 1 << 62, Copy: 1 << 62, Seek: -(1 << 62)}}, nil, nil, size), 1), "past the signed result size"},
		{"wrong result", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Copy: size}}, nil, z(size), size), 1), "the delta gave"},
		{"truncated stream", deltaBundle(t, k, v1, v2, hostile([]differ.Control{{Copy: size}}, nil, z(100), size), 1), "ends early"},
	}
	before := k.snap(a)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := k.tryInstall(a, c.delta)
			if !errors.Is(err, ErrDelta) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want ErrDelta saying %q", err, c.msg)
			}
			if after := k.snap(a); after != before {
				t.Fatalf("a refused delta changed the device: %+v → %+v", before, after)
			}
			assertNoLeftovers(t, k)
		})
	}
	st := appStatus(t, a, "hello")
	if st.LastError != "" {
		t.Errorf("a failed delta is not a refusal of the release: last_error %q", st.LastError)
	}
	// The full release still installs.
	k.install(a, v2)
}

// A kill -9 half way through applying a delta leaves the device on its
// complete old binary after recovery, and the delta then installs.
func TestDeltaKilledMidApplyRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: crash tests run real processes; not in -short")
	}
	k := newKit(t)
	a := k.open(Options{})
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 2})
	k.install(a, v1)
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	d := deltaBundle(t, k, v1, v2, nil, 0)
	a.Close()
	ps, out := runTestAgent(t, k, DeltaFailpoint, "install", d)
	if !killedBySIGKILL(ps) {
		t.Fatalf("failpoint %s did not fire (%v): %s", DeltaFailpoint, ps, out)
	}
	assertComplete(t, k, "1.0.0")
	a = k.open(Options{})
	if _, err := a.Recover(context.Background()); err != nil {
		t.Fatalf("recover: %v", err)
	}
	st := assertConsistent(t, k, a)
	if st.Version != "1.0.0" || st.State != StateCommitted {
		t.Fatalf("after recovery: %s", dumpJSON(st))
	}
	k.install(a, d)
	if v := runVersion(t, k.appPath); v != "1.1.0" {
		t.Fatalf("after the delta: %s", v)
	}
}

// The device's memory bound holds for the bzip2 decoders: a device whose
// decoder memory is small refuses a level-9 delta before applying it.
func TestDeltaLevelLimit(t *testing.T) {
	a := &Agent{decoderLimit: 1 << 20}
	if got := a.deltaLevelLimit(); got != 0 {
		t.Fatalf("1 MiB of decoder memory allows level %d, want 0", got)
	}
	a.decoderLimit = 64 << 20
	if got := a.deltaLevelLimit(); got != 9 {
		t.Fatalf("64 MiB allows level %d, want 9", got)
	}
	m := &protocol.Manifest{App: "hello", Version: "1.0.0", Delta: &protocol.Delta{MaxBzip2Level: 5}}
	a.decoderLimit = 4 << 20
	if err := a.checkDeltaMemory(m); !errors.Is(err, ErrDelta) {
		t.Fatalf("got %v", err)
	}
	_ = bsdiff.Magic
}

// TestEmulatedDeltaApply: the agent cross-built for ARMv6, as a Raspberry
// Pi Zero (arm1176 under qemu-user), applies a delta to its armv6 app and
// ends with the full release's executable.
func TestEmulatedDeltaApply(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: emulation is slow; not in -short")
	}
	needQemuARM(t)
	agentBin := buildTestAgent(t, target{GOARCH: "arm", GOARM: "6"})
	v6 := target{GOARCH: "arm", GOARM: "6"}
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Target: v6, Profile: "linux-armv6"})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 2, Target: v6, Profile: "linux-armv6"})
	if ok, out := emulated(t, k, agentBin, "arm1176", "install", v1); !ok {
		t.Fatal(out)
	}
	if ok, out := emulated(t, k, agentBin, "arm1176", "commit", "hello"); !ok {
		t.Fatal(out)
	}
	d := deltaBundle(t, k, v1, v2, nil, 0)
	if ok, out := emulated(t, k, agentBin, "arm1176", "install", d); !ok {
		t.Fatalf("the delta on arm1176: %s", out)
	}
	_, want := bundleExe(t, k, v2)
	got, _ := os.ReadFile(k.appPath)
	if !bytes.Equal(got, want) {
		t.Fatal("the delta applied on arm1176 differs from the full release's executable")
	}
	cmd := exec.Command(k.appPath, "--version")
	cmd.Env = append(os.Environ(), "QEMU_CPU=arm1176")
	if b, err := cmd.Output(); err != nil || strings.TrimSpace(string(b)) != "1.1.0" {
		t.Fatalf("hello after the delta: %q %v", b, err)
	}
}
