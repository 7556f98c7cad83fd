package hardware

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// emulated CPUs: what ReadCPU must see under qemu-user with each model.
// Measured with qemu-user 7.2 (Debian 12):
//   - QEMU's arm926 model includes a VFPv2 unit (real ARM926EJ-S boards
//     mostly have none) and reports AT_HWCAP VFP, yet a GOARM=6 binary
//     dies on it with SIGILL (UXTB, an ARMv6 instruction, in
//     runtime.getCPUCount — before the runtime's VFP check). AT_PLATFORM
//     "v5l" caps it at level 5. arm946 and the XScale pxa270 have no VFP.
//   - TCG has AVX2 but no AVX-512: Haswell-v4 gives x86-64-v3 (and so does
//     -cpu max); qemu64 lacks SSSE3/SSE4/POPCNT and gives x86-64-v1.
var emulated = []struct {
	qemu, cpu, goarch string
	platform          string
	level             int // ARMLevel or AMD64Level
	has, hasNot       []string
}{
	{"qemu-arm", "arm1176", "arm", "v6l", 6, []string{"vfp"}, []string{"vfpv3", "neon"}},
	{"qemu-arm", "cortex-a7", "arm", "v7l", 7, []string{"vfp", "vfpv3", "neon"}, nil},
	{"qemu-arm", "arm926", "arm", "v5l", 5, []string{"vfp"}, []string{"vfpv3"}},
	{"qemu-arm", "arm946", "arm", "v5l", 5, nil, []string{"vfp", "vfpv3"}},
	{"qemu-arm", "pxa270", "arm", "v5l", 5, []string{"iwmmxt"}, []string{"vfp"}},
	{"qemu-aarch64", "cortex-a53", "arm64", "aarch64", 0, []string{"fp", "asimd", "aes", "crc32"}, []string{"sve"}},
	{"qemu-x86_64", "qemu64", "amd64", "x86_64", 1, []string{"sse3", "cx16"}, []string{"ssse3", "popcnt", "avx2"}},
	{"qemu-x86_64", "Haswell-v4", "amd64", "x86_64", 3, []string{"avx2", "bmi2", "fma", "movbe", "sse4.2"}, []string{"avx512f"}},
	// The AR9331's core (big-endian) and the mt7621-router's stand-in
	// (little-endian): MIPS32r2 without an FPU. No AT_PLATFORM, and
	// AT_HWCAP is 0 (its MIPS bits are R6, MSA and the like).
	{"qemu-mips", "24Kc", "mips", "", 0, nil, nil},
	{"qemu-mipsel", "24Kc", "mipsle", "", 0, nil, nil},
}

// emuName names a subtest after the emulated core, with the architecture
// where one core model serves two (24Kc: mips and mipsle).
func emuName(goarch, cpu string) string {
	if strings.HasPrefix(goarch, "mips") {
		return goarch + "-" + cpu
	}
	return cpu
}

func TestReadCPUEmulated(t *testing.T) {
	for _, e := range emulated {
		t.Run(emuName(e.goarch, e.cpu), func(t *testing.T) {
			c := emulatedCPU(t, e.qemu, e.cpu, e.goarch)
			if c.GOARCH != e.goarch || c.Platform != e.platform {
				t.Errorf("GOARCH %q platform %q, want %q %q", c.GOARCH, c.Platform, e.goarch, e.platform)
			}
			switch e.goarch {
			case "arm":
				if c.ARMLevel != e.level || c.AMD64Level != 0 {
					t.Errorf("ARMLevel %d AMD64Level %d, want %d 0 (HWCAP %#x)", c.ARMLevel, c.AMD64Level, e.level, c.HWCAP)
				}
			case "amd64":
				if c.AMD64Level != e.level || c.ARMLevel != 0 {
					t.Errorf("AMD64Level %d ARMLevel %d, want %d 0 (features %v)", c.AMD64Level, c.ARMLevel, e.level, c.Features)
				}
			default:
				if c.ARMLevel != 0 || c.AMD64Level != 0 {
					t.Errorf("levels %d/%d on %s, want 0", c.ARMLevel, c.AMD64Level, e.goarch)
				}
			}
			for _, f := range e.has {
				if !slices.Contains(c.Features, f) {
					t.Errorf("features %v lack %s", c.Features, f)
				}
			}
			for _, f := range e.hasNot {
				if slices.Contains(c.Features, f) {
					t.Errorf("features %v include %s", c.Features, f)
				}
			}
			if e.goarch != "amd64" && e.goarch != "mips" && e.goarch != "mipsle" && c.HWCAP == 0 {
				t.Errorf("AT_HWCAP is 0 under emulation")
			}
		})
	}
}

// TestCanRunAgreesWithRuntime is the ground truth for CanRun: every
// GOARM/GOAMD64 build of cpuprobe is run on every emulated core, and
// CanRun must accept exactly the builds that really start. (The Go runtime
// refuses a GOARM=7 binary without VFPv3 and a GOAMD64=v3 binary without
// AVX2 at start-up.)
func TestCanRunAgreesWithRuntime(t *testing.T) {
	// MIPS: softfloat only. A hardfloat build needs an FPU or the kernel's
	// FPU emulator, which the auxiliary vector does not show, so CanRun
	// accepts it and the on-device probe decides (TestMIPSHardfloatNeedsFPU).
	builds := map[string][]string{"arm": {"5", "6", "7"}, "amd64": {"v1", "v3"}, "arm64": {""}, "mips": {"softfloat"}, "mipsle": {"softfloat"}}
	for _, e := range emulated {
		t.Run(emuName(e.goarch, e.cpu), func(t *testing.T) {
			c := emulatedCPU(t, e.qemu, e.cpu, e.goarch)
			for _, level := range builds[e.goarch] {
				tgt := Target{GOOS: "linux", GOARCH: e.goarch}
				switch e.goarch {
				case "arm":
					tgt.GOARM = level
				case "amd64":
					tgt.GOAMD64 = level
				case "mips", "mipsle":
					tgt.GOMIPS = level
				}
				_, stderr, runErr := runProbe(t, e.qemu, e.cpu, probe(t, e.goarch, level))
				verdict := c.CanRun(tgt)
				if (runErr == nil) != (verdict == nil) {
					t.Errorf("%s on %s: the binary ran=%v (%v: %s) but CanRun says %v", tgt, e.cpu, runErr == nil, runErr, strings.TrimSpace(string(stderr)), verdict)
				}
				if verdict != nil && !errors.Is(verdict, ErrIncompatible) {
					t.Errorf("CanRun refusal does not wrap ErrIncompatible: %v", verdict)
				}
			}
		})
	}
}

func TestCanRunMessages(t *testing.T) {
	t.Run("GOARM=7 on arm1176", func(t *testing.T) {
		c := emulatedCPU(t, "qemu-arm", "arm1176", "arm")
		err := c.CanRun(TargetFor(mustProfile(t, "linux-armv7")))
		if err == nil {
			t.Fatal("a GOARM=7 release was accepted on an ARM1176")
		}
		for _, want := range []string{"needs ARMv7 with VFPv3 (GOARM=7)", "this CPU (v6l) is ARMv6 with VFPv2", "AT_HWCAP 0x", "no VFPv3", "GOARM=6 at most", "publish a linux-armv5 build for this device (the most widely compatible profile it runs; it also runs linux-armv6)"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message lacks %q:\n%v", want, err)
			}
		}
		if err := c.CanRun(TargetFor(mustProfile(t, "linux-armv6"))); err != nil {
			t.Errorf("armv6 release refused on ARM1176: %v", err)
		}
	})
	t.Run("GOARM=6 on arm926 (ARMv5 with VFP)", func(t *testing.T) {
		c := emulatedCPU(t, "qemu-arm", "arm926", "arm")
		err := c.CanRun(TargetFor(mustProfile(t, "linux-armv6")))
		if err == nil {
			t.Fatal("a GOARM=6 release was accepted on an ARMv5 core")
		}
		for _, want := range []string{"needs ARMv6 with VFP (GOARM=6)", "this CPU (v5l) is ARMv5 with VFPv2", "GOARM=5 at most", "publish a linux-armv5 build"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message lacks %q:\n%v", want, err)
			}
		}
	})
	t.Run("GOAMD64=v3 without AVX2", func(t *testing.T) {
		c := emulatedCPU(t, "qemu-x86_64", "qemu64", "amd64")
		err := c.CanRun(TargetFor(mustProfile(t, "linux-amd64-v3")))
		if err == nil {
			t.Fatal("a GOAMD64=v3 release was accepted on qemu64")
		}
		for _, want := range []string{"needs x86-64-v3 (GOAMD64=v3)", "only x86-64-v1", "avx2", "popcnt", "publish a linux-amd64 build for this device"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message lacks %q:\n%v", want, err)
			}
		}
	})
	for _, tc := range []struct{ qemu, goarch, other, suggest string }{
		{"qemu-mips", "mips", "linux-mipsle", "linux-mips"},
		{"qemu-mipsel", "mipsle", "linux-mips", "linux-mipsle"},
	} {
		t.Run(tc.goarch+" device, "+tc.other+" release", func(t *testing.T) {
			c := emulatedCPU(t, tc.qemu, "24Kc", tc.goarch)
			other := mustProfile(t, tc.other)
			err := c.CanRun(TargetFor(other))
			if !errors.Is(err, ErrIncompatible) {
				t.Fatalf("a %s release on a %s agent: %v", other.GOARCH, tc.goarch, err)
			}
			for _, want := range []string{"built for " + TargetFor(other).String(), "this agent runs as linux/" + tc.goarch, "publish a " + tc.suggest + " build"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message lacks %q:\n%v", want, err)
				}
			}
			if err := c.CanRun(TargetFor(mustProfile(t, tc.suggest))); err != nil {
				t.Errorf("its own profile %s refused: %v", tc.suggest, err)
			}
		})
	}
	t.Run("wrong architecture", func(t *testing.T) {
		c := emulatedCPU(t, "qemu-aarch64", "cortex-a53", "arm64")
		err := c.CanRun(TargetFor(mustProfile(t, "linux-armv7")))
		if !errors.Is(err, ErrIncompatible) {
			t.Fatalf("an arm release on an arm64 agent: %v", err)
		}
		for _, want := range []string{"linux/arm GOARM=7", "linux/arm64", "publish a linux-arm64 build"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message lacks %q:\n%v", want, err)
			}
		}
	})
}

func mustProfile(t testing.TB, name string) Profile {
	t.Helper()
	p, err := DefaultSet().Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBestProfileEmulated(t *testing.T) {
	all := []string{"linux-amd64", "linux-amd64-v3", "linux-arm64", "linux-armv5", "linux-armv6", "linux-armv7", "linux-mips", "linux-mipsle"}
	routers := []string{"mt7621-router", "ar9331-router"}
	cases := []struct {
		qemu, cpu, goarch string
		candidates        []string
		want              string // "" = refused
	}{
		{"qemu-arm", "arm1176", "arm", all, "linux-armv6"},
		{"qemu-arm", "cortex-a7", "arm", all, "linux-armv7"},
		{"qemu-arm", "arm946", "arm", all, "linux-armv5"},
		{"qemu-arm", "arm1176", "arm", []string{"rpi-2", "rpi-zero", "no-such-profile"}, "rpi-zero"},
		{"qemu-arm", "arm1176", "arm", []string{"linux-armv7", "linux-arm64"}, ""},
		{"qemu-aarch64", "cortex-a53", "arm64", all, "linux-arm64"},
		{"qemu-x86_64", "qemu64", "amd64", all, "linux-amd64"},
		{"qemu-x86_64", "Haswell-v4", "amd64", all, "linux-amd64-v3"},
		{"qemu-mips", "24Kc", "mips", all, "linux-mips"},
		{"qemu-mipsel", "24Kc", "mipsle", all, "linux-mipsle"},
		// An AR9331 (big-endian 24Kc) picks its board's build, an MT7621
		// (little-endian) the other one.
		{"qemu-mips", "24Kc", "mips", routers, "ar9331-router"},
		{"qemu-mipsel", "24Kc", "mipsle", routers, "mt7621-router"},
	}
	for _, tc := range cases {
		t.Run(emuName(tc.goarch, tc.cpu)+"/"+strings.Join(tc.candidates, ","), func(t *testing.T) {
			c := emulatedCPU(t, tc.qemu, tc.cpu, tc.goarch)
			got, err := BestProfile(c, tc.candidates, DefaultSet())
			if tc.want == "" {
				if err == nil || !errors.Is(err, ErrIncompatible) {
					t.Fatalf("BestProfile = %q, %v; want an ErrIncompatible refusal", got, err)
				}
				for _, want := range []string{"linux-armv7: this release needs ARMv7", "linux-arm64: this release is built for linux/arm64", "publish a linux-armv5 build"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("refusal lacks %q:\n%v", want, err)
					}
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("BestProfile = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestReadFactsEmulated(t *testing.T) {
	needQEMU(t, "qemu-arm")
	dir := t.TempDir()
	out, stderr, err := runProbe(t, "qemu-arm", "arm1176", probe(t, "arm", "5"), "-facts", dir)
	if err != nil {
		t.Fatalf("cpuprobe -facts: %v\n%s", err, stderr)
	}
	var f struct {
		Facts
		Summary string `json:"summary"`
	}
	if err := json.Unmarshal(out, &f); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if f.Machine != "armv6l" || f.CPU.ARMLevel != 6 {
		t.Errorf("uname machine %q ARMLevel %d, want armv6l 6", f.Machine, f.CPU.ARMLevel)
	}
	if !strings.HasPrefix(f.Summary, "armv6 (vfp) · ") || !strings.Contains(f.Summary, " free on "+dir+" · ") || !strings.HasSuffix(f.Summary, " RAM") {
		t.Errorf("summary %q", f.Summary)
	}
	if len(f.Storage) != 1 || f.Storage[0].Total <= 0 || f.Memory.Total <= 0 {
		t.Errorf("facts %+v", f.Facts)
	}
}

// Why every built-in MIPS profile is softfloat, and why CanRun cannot do
// better than accept GOMIPS=hardfloat: a hardfloat build dies with SIGILL
// on a 24Kc (no FPU, and qemu-user, like OpenWrt's kernels, emulates none)
// but runs on a 24Kf (with FPU); the auxiliary vector looks the same on
// both. The softfloat build runs on both. The device's probe decides.
func TestMIPSHardfloatNeedsFPU(t *testing.T) {
	for _, tc := range []struct {
		cpu, gomips string
		runs        bool
	}{
		{"24Kc", "softfloat", true},
		{"24Kf", "softfloat", true},
		{"24Kc", "hardfloat", false},
		{"24Kf", "hardfloat", true},
	} {
		_, stderr, err := runProbe(t, "qemu-mips", tc.cpu, probe(t, "mips", tc.gomips))
		if (err == nil) != tc.runs {
			t.Errorf("GOMIPS=%s under qemu-mips -cpu %s: ran=%v (%v: %s), want ran=%v", tc.gomips, tc.cpu, err == nil, err, strings.TrimSpace(string(stderr)), tc.runs)
		}
		c := emulatedCPU(t, "qemu-mips", tc.cpu, "mips")
		if v := c.CanRun(Target{GOOS: "linux", GOARCH: "mips", GOMIPS: tc.gomips}); v != nil {
			t.Errorf("CanRun refused GOMIPS=%s on %s: %v", tc.gomips, tc.cpu, v)
		}
	}
}
