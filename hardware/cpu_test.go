package hardware

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// auxv encodes key/value pairs as the kernel does, with an AT_NULL end.
func auxv(word int, big bool, kv ...uint64) []byte {
	var order binary.AppendByteOrder = binary.LittleEndian
	if big {
		order = binary.BigEndian
	}
	var b []byte
	for _, v := range append(kv, AT_NULL, 0) {
		if word == 4 {
			b = order.AppendUint32(b, uint32(v))
		} else {
			b = order.AppendUint64(b, v)
		}
	}
	return b
}

func TestParseAuxv(t *testing.T) {
	for _, word := range []int{4, 8} {
		for _, big := range []bool{false, true} {
			b := auxv(word, big, AT_HWCAP, 0x8097, AT_PLATFORM, 0xbeef0000, AT_HWCAP2, 0x10, AT_HWCAP, 0xffff)
			m, err := ParseAuxv(b, word, big)
			if err != nil {
				t.Fatalf("word %d big %v: %v", word, big, err)
			}
			if len(m) != 3 || m[AT_HWCAP] != 0x8097 || m[AT_HWCAP2] != 0x10 || m[AT_PLATFORM] != 0xbeef0000 {
				t.Errorf("word %d big %v: %#v", word, big, m)
			}
			// Trailing bytes after AT_NULL are ignored, as the kernel pads.
			if _, err := ParseAuxv(append(b, 1, 2, 3), word, big); err != nil {
				t.Errorf("trailing bytes after AT_NULL: %v", err)
			}
			// Truncated before the terminator.
			if _, err := ParseAuxv(b[:len(b)-2*word], word, big); err == nil || !strings.Contains(err.Error(), "no AT_NULL terminator") {
				t.Errorf("truncated vector: %v", err)
			}
		}
	}
	if _, err := ParseAuxv(nil, 8, false); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty vector: %v", err)
	}
	if _, err := ParseAuxv(auxv(8, false), 2, false); err == nil || !strings.Contains(err.Error(), "word size 2") {
		t.Errorf("bad word size: %v", err)
	}
	var many []uint64
	for i := uint64(1); i <= maxAuxvEntries+1; i++ {
		many = append(many, i, i)
	}
	if _, err := ParseAuxv(auxv(4, false, many...), 4, false); err == nil || !strings.Contains(err.Error(), "more than 4096") {
		t.Errorf("absurd vector: %v", err)
	}
}

// The real /proc/self/auxv, parsed, agrees with the runtime's own copy.
func TestParseAuxvNative(t *testing.T) {
	raw, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		t.Skipf("SKIP: /proc/self/auxv unreadable (%v); tests need a mounted /proc", err)
	}
	m, err := ParseAuxv(raw, int(unsafe.Sizeof(uintptr(0))), nativeBigEndian())
	if err != nil {
		t.Fatal(err)
	}
	rt, err := unix.Auxv()
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range rt {
		if kv[0] == AT_NULL {
			continue
		}
		if got, ok := m[uint64(kv[0])]; !ok || got != uint64(kv[1]) {
			t.Errorf("key %d: parsed %#x (%v), runtime has %#x", kv[0], got, ok, kv[1])
		}
	}
	if m[AT_HWCAP] == 0 && runtime.GOARCH != "amd64" {
		t.Errorf("AT_HWCAP missing: %#v", m)
	}
}

func TestReadCPUNative(t *testing.T) {
	c, err := ReadCPU()
	if err != nil {
		t.Fatal(err)
	}
	if c.GOARCH != runtime.GOARCH {
		t.Errorf("GOARCH %q", c.GOARCH)
	}
	if c.Platform == "" {
		t.Errorf("no AT_PLATFORM read")
	}
	if runtime.GOARCH != "amd64" {
		return
	}
	if c.AMD64Level < 1 || c.AMD64Level > 4 {
		t.Fatalf("AMD64Level %d", c.AMD64Level)
	}
	// Natively (no emulation) the kernel's flag list is an independent
	// oracle for CPUID. Only the test trusts /proc/cpuinfo, never the code.
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("SKIP: no /proc/cpuinfo to cross-check (%v)", err)
	}
	var flags map[string]bool
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			flags = map[string]bool{}
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
			break
		}
	}
	kernelName := map[string]string{"sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "lahf": "lahf_lm", "lzcnt": "abm", "osxsave": "xsave"}
	var fromKernel []string
	for _, f := range x86Features {
		k := f.name
		if n, ok := kernelName[k]; ok {
			k = n
		}
		if flags[k] {
			fromKernel = append(fromKernel, f.name)
		}
	}
	if want := amd64Level(fromKernel); c.AMD64Level != want {
		t.Errorf("AMD64Level %d from CPUID, but the kernel's flags say x86-64-v%d (%v vs %v)", c.AMD64Level, want, c.Features, fromKernel)
	}
}

func TestARMLevelFromHWCAP(t *testing.T) {
	vfp3 := uint64(HWCAP_ARM_VFP | HWCAP_ARM_VFPv3)
	for _, tc := range []struct {
		hwcap    uint64
		platform string
		level    int
	}{
		{0, "", 5}, {HWCAP_ARM_VFPv3, "", 5}, {HWCAP_ARM_VFP, "", 6}, {vfp3, "", 7}, {0x8097 &^ HWCAP_ARM_VFP, "v6l", 5},
		{HWCAP_ARM_VFP, "v5l", 5}, {HWCAP_ARM_VFP, "v6l", 6}, {HWCAP_ARM_VFP, "v7l", 6}, {vfp3, "v6l", 6}, {vfp3, "v7l", 7},
		{vfp3, "v8l", 7}, {vfp3, "v4l", 5}, {vfp3, "aarch64", 7}, {vfp3, "v", 7}, {vfp3, "v99999l", 7},
	} {
		c := CPUFactsFromAuxv("arm", map[uint64]uint64{AT_HWCAP: tc.hwcap}, tc.platform)
		if c.ARMLevel != tc.level {
			t.Errorf("HWCAP %#x platform %q: level %d, want %d", tc.hwcap, tc.platform, c.ARMLevel, tc.level)
		}
	}
	if c := CPUFactsFromAuxv("arm64", map[uint64]uint64{AT_HWCAP: HWCAP_ARM_VFP}, ""); c.ARMLevel != 0 {
		t.Errorf("ARMLevel %d on arm64", c.ARMLevel)
	}
}

func TestAMD64Level(t *testing.T) {
	if l := amd64Level(nil); l != 1 {
		t.Errorf("no flags: level %d", l)
	}
	v2 := x86LevelFeatures(2)
	if l := amd64Level(v2); l != 2 {
		t.Errorf("v2 flags: level %d", l)
	}
	v3 := x86LevelFeatures(3)
	if l := amd64Level(v3[:len(v3)-1]); l != 2 {
		t.Errorf("v3 flags minus %s: level %d", v3[len(v3)-1], l)
	}
	if l := amd64Level(x86LevelFeatures(4)); l != 4 {
		t.Errorf("v4 flags: level %d", l)
	}
	// AVX-512 flags without the v3 ones do not make a v4 CPU.
	if l := amd64Level(append(v2, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")); l != 2 {
		t.Errorf("v2+avx512: level %d", l)
	}
}

func TestCanRunTable(t *testing.T) {
	armv6 := CPUFactsFromAuxv("arm", map[uint64]uint64{AT_HWCAP: 0x80d7}, "v6l")
	mips := CPUFacts{GOARCH: "mipsle"}
	amd := CPUFacts{GOARCH: "amd64", AMD64Level: 2, Features: x86LevelFeatures(2)}
	for _, tc := range []struct {
		c    CPUFacts
		t    Target
		want string // "" = runs
	}{
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "6"}, ""},
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "5"}, ""},
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "6,softfloat"}, ""},
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "7,hardfloat"}, "GOARM=7"},
		{armv6, Target{GOOS: "linux", GOARCH: "arm"}, "GOARM=7"}, // empty GOARM is Go's default 7
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "8"}, `GOARM="8"`},
		{armv6, Target{GOOS: "windows", GOARCH: "arm", GOARM: "6"}, "built for windows"},
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "6", ELFClass: 32, ELFMachine: "EM_ARM"}, ""},
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "6", ELFClass: 64, ELFMachine: "EM_AARCH64"}, "cannot be"},
		{armv6, Target{GOOS: "linux", GOARCH: "arm", GOARM: "6", ELFClass: 32, ELFMachine: "EM_ARM", ELFBigEndian: true}, "big-endian"},
		{mips, Target{GOOS: "linux", GOARCH: "mipsle", GOMIPS: "softfloat"}, ""},
		{mips, Target{GOOS: "linux", GOARCH: "mipsle", GOMIPS: "hardfloat"}, ""},
		{mips, Target{GOOS: "linux", GOARCH: "mipsle", GOMIPS: "fast"}, "GOMIPS"},
		{mips, Target{GOOS: "linux", GOARCH: "mips", GOMIPS: "softfloat"}, "built for linux/mips"},
		{amd, Target{GOOS: "linux", GOARCH: "amd64", GOAMD64: "v2"}, ""},
		{amd, Target{GOOS: "linux", GOARCH: "amd64"}, ""},
		{amd, Target{GOOS: "linux", GOARCH: "amd64", GOAMD64: "v3"}, "lacks avx, avx2"},
		{amd, Target{GOOS: "linux", GOARCH: "amd64", GOAMD64: "v9"}, "GOAMD64"},
		{amd, Target{GOOS: "linux", GOARCH: "riscv64"}, "riscv64"},
	} {
		err := tc.c.CanRun(tc.t)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s on %s: %v", tc.t, tc.c, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrIncompatible)):
			t.Errorf("%s on %s: %v; want a refusal mentioning %q", tc.t, tc.c, err, tc.want)
		}
	}
}

func TestBestProfileTable(t *testing.T) {
	set := DefaultSet()
	mips := CPUFacts{GOARCH: "mipsle"}
	if _, err := set.ParseProfiles([]byte("profiles:\n  - name: router-hf\n    base: linux-mipsle\n    gomips: hardfloat\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := BestProfile(mips, []string{"router-hf", "linux-mipsle"}, set); err != nil || got != "linux-mipsle" {
		t.Errorf("mips: %q %v; softfloat should win", got, err)
	}
	if got, err := BestProfile(mips, []string{"router-hf"}, set); err != nil || got != "router-hf" {
		t.Errorf("mips hardfloat only: %q %v", got, err)
	}
	if _, err := BestProfile(mips, nil, nil); !errors.Is(err, ErrIncompatible) {
		t.Errorf("no candidates: %v", err)
	}
	amd := CPUFacts{GOARCH: "amd64", AMD64Level: 3}
	if got, err := BestProfile(amd, []string{"x86-gateway", "x86-gateway-v3", "linux-arm64"}, nil); err != nil || got != "x86-gateway-v3" {
		t.Errorf("amd64-v3: %q %v", got, err)
	}
}

func TestSummary(t *testing.T) {
	f := Facts{
		CPU:     CPUFactsFromAuxv("arm", map[uint64]uint64{AT_HWCAP: 0x80d7}, "v6l"),
		Storage: []StorageFacts{{Path: "/var/lib/edgefleet", Free: 1288490189, Total: 8 << 30}},
		Memory:  MemoryFacts{Total: 412 << 20, Available: 200 << 20},
	}
	if got, want := f.Summary(), "armv6 (vfp) · 1.2GiB free on /var/lib/edgefleet · 412MiB RAM"; got != want {
		t.Errorf("Summary:\n got %q\nwant %q", got, want)
	}
	amd := Facts{CPU: CPUFacts{GOARCH: "amd64", AMD64Level: 3, Features: []string{"sse4.2", "avx2"}}}
	if got, want := amd.Summary(), "amd64-v3 (sse4.2, avx2)"; got != want {
		t.Errorf("Summary %q, want %q", got, want)
	}
}

func FuzzParseAuxv(f *testing.F) {
	if raw, err := os.ReadFile("/proc/self/auxv"); err == nil {
		f.Add(raw, 8, false)
	}
	f.Add(auxv(4, false, AT_HWCAP, 0x8097, AT_PLATFORM, 0xbeef0000), 4, false)
	f.Add(auxv(4, true, AT_HWCAP, 0x8097, AT_HWCAP2, 1), 4, true)
	f.Add(auxv(8, true, AT_HWCAP, 0xff), 8, true)
	f.Add([]byte{}, 4, false)
	f.Fuzz(func(t *testing.T, b []byte, word int, big bool) {
		m, err := ParseAuxv(b, word, big)
		if err != nil {
			if m != nil {
				t.Fatal("a map with an error")
			}
			return
		}
		if word != 4 && word != 8 {
			t.Fatalf("word size %d accepted", word)
		}
		if len(m) > len(b)/(2*word) || len(m) > maxAuxvEntries {
			t.Fatalf("%d entries from %d bytes", len(m), len(b))
		}
		if _, ok := m[AT_NULL]; ok {
			t.Fatal("AT_NULL in the result")
		}
		// What came out goes back in: re-encoding in map order round-trips.
		var kv []uint64
		for k, v := range m {
			kv = append(kv, k, v)
		}
		if word == 4 {
			for _, x := range kv {
				if x > 0xffffffff {
					t.Fatalf("a 64-bit value %#x from 4-byte words", x)
				}
			}
		}
		m2, err := ParseAuxv(auxv(word, big, kv...), word, big)
		if err != nil || len(m2) != len(m) {
			t.Fatalf("round trip: %v, %d vs %d entries", err, len(m2), len(m))
		}
		for k, v := range m {
			if m2[k] != v {
				t.Fatalf("round trip key %d: %#x vs %#x", k, m2[k], v)
			}
		}
		_ = CPUFactsFromAuxv("arm", m, "")
	})
}

func BenchmarkReadCPU(b *testing.B) {
	for b.Loop() {
		if _, err := ReadCPU(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadFacts(b *testing.B) {
	dir := b.TempDir()
	for b.Loop() {
		if _, err := ReadFacts(dir); err != nil {
			b.Fatal(err)
		}
	}
}
