package hardware

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]Size{
		"8MiB": 8 << 20, "512KiB": 512 << 10, "4MB": 4e6, "1.5 MiB": 3 << 19,
		"4096": 4096, "1GiB": 1 << 30, "100B": 100, "2M": 2 << 20,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "eight", "1e300GiB", "8 furlongs"} {
		if _, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), "8MiB") {
			t.Errorf("ParseSize(%q): want an error that shows the accepted form, got %v", in, err)
		}
	}
	for _, s := range []Size{8 << 20, 1536 << 10, 700, 1 << 30} {
		back, err := ParseSize(s.String())
		if err != nil || back != s {
			t.Errorf("%d → %q → %d, %v", s, s.String(), back, err)
		}
	}
}

func TestBuiltinProfiles(t *testing.T) {
	want := []string{"linux-amd64", "linux-amd64-v3", "linux-arm64", "linux-armv7", "linux-armv6", "linux-armv5", "linux-mips", "linux-mipsle"}
	ps := Profiles()
	if len(ps) != len(want) {
		t.Fatalf("%d built-in profiles, want %d", len(ps), len(want))
	}
	qemu := map[string]string{"linux-armv6": "arm1176", "linux-armv7": "cortex-a7", "linux-arm64": "cortex-a53", "linux-armv5": "arm926"}
	for i, p := range ps {
		if p.Name != want[i] {
			t.Errorf("profile %d is %s, want %s", i, p.Name, want[i])
		}
		if c, ok := qemu[p.Name]; ok && p.QEMUCPU != c {
			t.Errorf("%s emulated by %s, want %s", p.Name, p.QEMUCPU, c)
		}
		if p.GOARCH == "arm" && p.GOARM == "" || p.GOARCH == "amd64" && p.GOAMD64 == "" {
			t.Errorf("%s leaves its level implicit", p.Name)
		}
		env := strings.Join(p.Env(), " ")
		if !strings.Contains(env, "CGO_ENABLED=0") {
			t.Errorf("%s env %q does not disable cgo explicitly", p.Name, env)
		}
		if p.GOARCH == "arm" && !strings.Contains(env, "GOARM="+p.GOARM) {
			t.Errorf("%s env %q lacks GOARM", p.Name, env)
		}
		if p.ChunkSize == 0 || p.XZDictSize == 0 || p.MaxBinarySize == 0 || p.MinFreeStorage == 0 {
			t.Errorf("%s has unset defaults: %+v", p.Name, p)
		}
	}
	if p, _ := DefaultSet().Lookup("linux-mipsle"); p.GOMIPS != "softfloat" || p.QEMUBinary() != "qemu-mipsel" {
		t.Errorf("mipsle profile: %+v", p)
	}
	// The big-endian MIPS profile: softfloat (OpenWrt kernels have no FPU
	// emulator), probed under qemu-mips (not qemu-mipsel) with the 24Kc.
	p, err := DefaultSet().Lookup("linux-mips")
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(p.Env(), " ")
	if p.GOARCH != "mips" || p.GOMIPS != "softfloat" || p.QEMUBinary() != "qemu-mips" || p.QEMUCPU != "24Kc" || !strings.Contains(env, "GOARCH=mips GOMIPS=softfloat") {
		t.Errorf("linux-mips profile: %+v, env %q, qemu %s", p, env, p.QEMUBinary())
	}
	if tg := TargetFor(p); tg.ELFMachine != "EM_MIPS" || tg.ELFClass != 32 || !tg.ELFBigEndian || tg.String() != "linux/mips GOMIPS=softfloat" {
		t.Errorf("linux-mips target: %+v (%s)", tg, tg)
	}
}

// TestBoardsMatchVendorDocs holds every board of the catalogue to what its
// vendor documents (see the comment on boards in profile.go for the
// sources): architecture, byte order, ARM level, float ABI and the core
// QEMU emulates. A board added to the catalogue must be added here.
func TestBoardsMatchVendorDocs(t *testing.T) {
	want := map[string]struct {
		goarch, level string // level: GOARM, GOAMD64 or GOMIPS
		bigEndian     bool
		qemu, cpu     string
	}{
		"rpi-zero":         {"arm", "6", false, "qemu-arm", "arm1176"},         // BCM2835: ARM1176JZF-S, ARMv6 + VFPv2
		"rpi-1":            {"arm", "6", false, "qemu-arm", "arm1176"},         // BCM2835
		"rpi-2":            {"arm", "7", false, "qemu-arm", "cortex-a7"},       // BCM2836: Cortex-A7 (v1.2: A53, runs GOARM=7)
		"rpi-3":            {"arm64", "", false, "qemu-aarch64", "cortex-a53"}, // BCM2837: Cortex-A53
		"rpi-zero-2":       {"arm64", "", false, "qemu-aarch64", "cortex-a53"}, // RP3A0: Cortex-A53
		"rpi-4":            {"arm64", "", false, "qemu-aarch64", "cortex-a72"}, // BCM2711: Cortex-A72
		"rpi-5":            {"arm64", "", false, "qemu-aarch64", "cortex-a76"}, // BCM2712: Cortex-A76
		"beaglebone-black": {"arm", "7", false, "qemu-arm", "cortex-a8"},       // AM3358: Cortex-A8, VFPv3 + NEON
		"x86-gateway":      {"amd64", "v1", false, "qemu-x86_64", "qemu64"},
		"x86-gateway-v3":   {"amd64", "v3", false, "qemu-x86_64", "Haswell-v4"},
		"mt7621-router":    {"mipsle", "softfloat", false, "qemu-mipsel", "24Kc"}, // MIPS 1004Kc, little-endian, no FPU
		"ar9331-router":    {"mips", "softfloat", true, "qemu-mips", "24Kc"},      // MIPS 24Kc, big-endian, no FPU
	}
	set := DefaultSet()
	bs := Boards()
	if len(bs) != len(want) {
		t.Errorf("%d boards in the catalogue, %d checked here: check the new board against its vendor's documentation and add it", len(bs), len(want))
	}
	for _, b := range bs {
		w, ok := want[b.Name]
		if !ok {
			t.Errorf("board %s is not checked against its vendor's documentation here", b.Name)
			continue
		}
		p, err := set.Lookup(b.Name)
		if err != nil {
			t.Fatal(err)
		}
		level := p.GOARM + p.GOAMD64 + p.GOMIPS
		tg := TargetFor(p)
		if p.GOARCH != w.goarch || level != w.level || tg.ELFBigEndian != w.bigEndian || p.QEMUBinary() != w.qemu || p.QEMUCPU != w.cpu {
			t.Errorf("board %s (%s) builds %s (big-endian %v) and is probed under %s -cpu %s; its vendor documents GOARCH=%s %s (big-endian %v), probed under %s -cpu %s",
				b.Name, b.Model, tg, tg.ELFBigEndian, p.QEMUBinary(), p.QEMUCPU, w.goarch, w.level, w.bigEndian, w.qemu, w.cpu)
		}
	}
}

func TestBoardsResolve(t *testing.T) {
	set := DefaultSet()
	for _, b := range Boards() {
		p, err := set.Lookup(b.Name)
		if err != nil {
			t.Fatalf("board %s: %v", b.Name, err)
		}
		base, _ := set.Lookup(b.Profile)
		if p.GOARCH != base.GOARCH || p.GOARM != base.GOARM || p.GOAMD64 != base.GOAMD64 || p.GOMIPS != base.GOMIPS {
			t.Errorf("board %s does not build like its profile %s", b.Name, b.Profile)
		}
		if b.UPX != nil && p.UPX != *b.UPX {
			t.Errorf("board %s: UPX override lost", b.Name)
		}
	}
	if p, _ := set.Lookup("rpi-zero"); p.GOARM != "6" {
		t.Errorf("rpi-zero must build GOARM=6, got %q", p.GOARM)
	}
	_, err := set.Lookup("rpi-9")
	if err == nil || !strings.Contains(err.Error(), "linux-armv6") || !strings.Contains(err.Error(), "edgefleet profiles") {
		t.Errorf("unknown profile error should list the choices: %v", err)
	}
}

func TestProfilesFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(path, []byte(`profiles:
  - name: shed-sensor
    base: rpi-zero
    upx: true
    max_binary_size: 6MiB
  - name: gw-v2
    goarch: amd64
    goamd64: v2
    qemu_cpu: Nehalem
    chunk_size: 64KiB
`), 0o644)
	set := DefaultSet()
	ps, err := set.LoadProfilesFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("%d profiles", len(ps))
	}
	shed, _ := set.Lookup("shed-sensor")
	if shed.GOARM != "6" || !shed.UPX || shed.MaxBinarySize != 6<<20 || shed.QEMUCPU != "arm1176" {
		t.Errorf("shed-sensor did not inherit from rpi-zero: %+v", shed)
	}
	gw, _ := set.Lookup("gw-v2")
	if gw.GOOS != "linux" || gw.GOAMD64 != "v2" || gw.ChunkSize != 64<<10 || gw.XZDictSize != DefaultXZDictSize64 {
		t.Errorf("gw-v2 defaults: %+v", gw)
	}

	bad := map[string]string{
		"unknown field":   "profiles:\n  - name: x\n    goarch: arm64\n    turbo: true\n",
		"arm needs goarm": "profiles:\n  - name: x\n    goarch: arm\n",
		"bad goamd64":     "profiles:\n  - name: x\n    goarch: amd64\n    goamd64: v9\n",
		"goarm on arm64":  "profiles:\n  - name: x\n    goarch: arm64\n    goarm: \"7\"\n",
		"bad size":        "profiles:\n  - name: x\n    goarch: arm64\n    max_binary_size: lots\n",
		"tiny chunks":     "profiles:\n  - name: x\n    goarch: arm64\n    chunk_size: 1KiB\n",
		"bad name":        "profiles:\n  - name: X Y\n    goarch: arm64\n",
		"duplicate":       "profiles:\n  - name: x\n    goarch: arm64\n  - name: x\n    goarch: arm64\n",
		"unknown base":    "profiles:\n  - name: x\n    base: rpi-9\n",
		"empty":           "{}\n",
	}
	wantMsg := map[string]string{
		"unknown field": "turbo", "arm needs goarm": "GOARM", "bad goamd64": "v1..v4", "goarm on arm64": "goarm",
		"bad size": "8MiB", "tiny chunks": "chunk_size", "bad name": "lower-case", "duplicate": "twice",
		"unknown base": "rpi-9", "empty": "profiles:",
	}
	for name, text := range bad {
		_, err := DefaultSet().ParseProfiles([]byte(text))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(wantMsg[name])) {
			t.Errorf("%s: error %q does not mention %q", name, err, wantMsg[name])
		}
	}
}

// The refusal on a capable CPU suggests the most widely compatible profile
// it runs (plain linux-amd64 on an x86-64-v3 CPU), and names the others.
func TestSuggestionIsMostWidelyCompatible(t *testing.T) {
	c := CPUFacts{GOARCH: "amd64", AMD64Level: 3}
	var names []string
	for _, p := range c.RunnableProfiles() {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "linux-amd64,linux-amd64-v3" {
		t.Fatalf("runnable profiles %v", names)
	}
	arm64, err := DefaultSet().Lookup("linux-arm64")
	if err != nil {
		t.Fatal(err)
	}
	err = c.CanRun(TargetFor(arm64))
	if err == nil || !strings.Contains(err.Error(), "publish a linux-amd64 build for this device (the most widely compatible profile it runs; it also runs linux-amd64-v3)") {
		t.Fatalf("refusal: %v", err)
	}
	if got := c.SuggestedProfile(); got != "linux-amd64" {
		t.Fatalf("SuggestedProfile %q", got)
	}
}
