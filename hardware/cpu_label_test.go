package hardware

import (
	"errors"
	"testing"
)

// TestParseCPUStringRoundTrip reads back what CPUFacts.String prints for
// real CPUs and checks CanRun decides the same on both.
func TestParseCPUStringRoundTrip(t *testing.T) {
	facts := []CPUFacts{
		CPUFactsFromAuxv("arm", map[uint64]uint64{AT_HWCAP: HWCAP_ARM_VFP}, "v6l"),
		CPUFactsFromAuxv("arm", map[uint64]uint64{AT_HWCAP: HWCAP_ARM_VFP | HWCAP_ARM_VFPv3 | 1<<12}, "v7l"),
		CPUFactsFromAuxv("arm", map[uint64]uint64{}, "v5l"),
		CPUFactsFromAuxv("arm64", map[uint64]uint64{AT_HWCAP: 0b1011}, "aarch64"),
		{GOARCH: "amd64", AMD64Level: 3, Features: []string{"sse4.2", "avx2", "aes"}},
		{GOARCH: "amd64", AMD64Level: 1},
		{GOARCH: "mipsle"}, {GOARCH: "mips"},
	}
	var targets []Target
	for _, p := range Profiles() {
		targets = append(targets, TargetFor(p))
	}
	for _, c := range facts {
		got, err := ParseCPUString(c.String())
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if got.String() != c.String() {
			t.Errorf("round trip: %q became %q", c, got)
		}
		for _, tg := range targets {
			if a, b := c.CanRun(tg) == nil, got.CanRun(tg) == nil; a != b {
				t.Errorf("%s on %s: CanRun %v on the real facts, %v on the parsed ones", tg, c, a, b)
			}
		}
	}
	armv6, _ := ParseCPUString("armv6 (vfp)")
	if err := armv6.CanRun(TargetFor(mustProfile(t, "linux-armv7"))); !errors.Is(err, ErrIncompatible) {
		t.Errorf("armv7 build on an armv6 CPU: %v, want ErrIncompatible", err)
	}
}

func TestParseCPUStringRefuses(t *testing.T) {
	for _, s := range []string{"", "arm", "amd64", "armv8", "armv06", "amd64-v5", "amd64-v", "x86", "armv6 vfp", "armv6 ()",
		"armv6 (vfp,neon)", "armv6 (vfp, )", "armv6 (vfp) ", "sparc64", "armv6  (vfp)"} {
		if c, err := ParseCPUString(s); err == nil {
			t.Errorf("ParseCPUString(%q) = %+v, want an error", s, c)
		}
	}
}

func TestCPUFactsFor(t *testing.T) {
	for _, p := range Profiles() {
		c, err := CPUFactsFor(p)
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		if err := c.CanRun(TargetFor(p)); err != nil {
			t.Errorf("%s: its own least CPU cannot run it: %v", p.Name, err)
		}
	}
	v6, _ := CPUFactsFor(mustProfile(t, "linux-armv6"))
	if v6.CanRun(TargetFor(mustProfile(t, "linux-armv7"))) == nil {
		t.Error("an armv6 device may run an armv7 build")
	}
}

func FuzzParseCPUString(f *testing.F) {
	for _, s := range []string{"armv6 (vfp)", "amd64-v3 (sse4.2, avx2, aes)", "arm64", "mipsle", "armv7 (vfp, vfpv3, neon)", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCPUString(s)
		if err != nil {
			return
		}
		// What parses prints back to itself and is a known architecture.
		if c.String() != s {
			t.Fatalf("%q parsed to %+v, which prints %q", s, c, c.String())
		}
		if _, ok := elfFor(c.GOARCH); !ok {
			t.Fatalf("%q parsed to unknown GOARCH %q", s, c.GOARCH)
		}
	})
}
