package hardware

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/cpu"
)

// Auxiliary vector keys used here (linux/include/uapi/linux/auxvec.h).
const (
	AT_NULL     = 0
	AT_PLATFORM = 15
	AT_HWCAP    = 16
	AT_HWCAP2   = 26
)

// 32-bit ARM AT_HWCAP bits that decide GOARM (arch/arm/include/uapi/asm/hwcap.h).
// The Go runtime checks exactly these two at start-up: GOARM≥6 needs VFP,
// GOARM=7 also needs VFPv3.
const (
	HWCAP_ARM_VFP   = 1 << 6
	HWCAP_ARM_VFPv3 = 1 << 13
)

// maxAuxvEntries bounds ParseAuxv: a real vector has a few dozen entries.
const maxAuxvEntries = 4096

// CPUFacts is what this CPU can execute, read from the auxiliary vector
// (never /proc/cpuinfo, which shows the host under qemu-user and is wrong on
// some kernels) and, on amd64, from CPUID.
type CPUFacts struct {
	// GOARCH is runtime.GOARCH of the running agent.
	GOARCH string `json:"goarch"`
	// HWCAP and HWCAP2 are AT_HWCAP and AT_HWCAP2 (0 where absent).
	HWCAP  uint64 `json:"hwcap"`
	HWCAP2 uint64 `json:"hwcap2"`
	// Platform is the AT_PLATFORM string if present ("v6l", "v7l", "aarch64", "x86_64").
	Platform string `json:"platform,omitempty"`
	// ARMLevel, on arm only, is the highest GOARM this CPU runs: 7 with
	// VFP and VFPv3, 6 with VFP, else 5 — capped by the architecture in
	// AT_PLATFORM ("v5l" caps at 5), because GOARM=6 code also uses ARMv6
	// instructions (UXTB): on an ARMv5 core with VFP (QEMU's arm926) a
	// GOARM=6 binary dies with SIGILL before the runtime's own VFP check.
	// 0 on other architectures.
	ARMLevel int `json:"arm_level,omitempty"`
	// AMD64Level, on amd64 only, is the highest GOAMD64 level (1..4) that
	// CPUID reports. 0 on other architectures.
	AMD64Level int `json:"amd64_level,omitempty"`
	// Features are human-readable flags ("vfp", "vfpv3", "neon", "avx2", ...).
	Features []string `json:"features,omitempty"`
}

// ParseAuxv parses a raw auxiliary vector (the bytes of /proc/PID/auxv):
// pairs of machine words (key, value) ending with AT_NULL. wordSize is 4 or
// 8. Input is untrusted: it never panics, allocates at most in proportion to
// len(b), and rejects a vector without an AT_NULL terminator, a trailing
// partial word, or more than 4096 entries. For keys that repeat, the first
// value wins (the kernel never repeats one).
func ParseAuxv(b []byte, wordSize int, bigEndian bool) (map[uint64]uint64, error) {
	if wordSize != 4 && wordSize != 8 {
		return nil, fmt.Errorf("auxiliary vector: word size %d, want 4 or 8", wordSize)
	}
	var order binary.ByteOrder = binary.LittleEndian
	if bigEndian {
		order = binary.BigEndian
	}
	word := func(p []byte) uint64 {
		if wordSize == 4 {
			return uint64(order.Uint32(p))
		}
		return order.Uint64(p)
	}
	pair := 2 * wordSize
	n := len(b) / pair
	if n > maxAuxvEntries+1 {
		n = maxAuxvEntries + 1
	}
	m := make(map[uint64]uint64, min(n, 64))
	for i := 0; i+pair <= len(b); i += pair {
		if len(m) >= maxAuxvEntries {
			return nil, fmt.Errorf("auxiliary vector: more than %d entries; this is not an auxiliary vector", maxAuxvEntries)
		}
		k, v := word(b[i:]), word(b[i+wordSize:])
		if k == AT_NULL {
			return m, nil
		}
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	if len(b) == 0 {
		return nil, errors.New("auxiliary vector is empty; is /proc mounted?")
	}
	return nil, fmt.Errorf("auxiliary vector of %d bytes has no AT_NULL terminator (truncated, or not %d-byte words)", len(b), wordSize)
}

// CPUFactsFromAuxv derives the CPU facts of a process running as goarch
// from its parsed auxiliary vector and AT_PLATFORM string. AMD64Level and
// the x86 features are not in the auxiliary vector: ReadCPU fills them from
// CPUID.
func CPUFactsFromAuxv(goarch string, aux map[uint64]uint64, platform string) CPUFacts {
	c := CPUFacts{GOARCH: goarch, HWCAP: aux[AT_HWCAP], HWCAP2: aux[AT_HWCAP2], Platform: platform}
	switch goarch {
	case "arm":
		c.ARMLevel = armLevel(c.HWCAP, platform)
		c.Features = bitNames(c.HWCAP, armHWCAP[:], c.HWCAP2, armHWCAP2[:])
	case "arm64":
		c.Features = bitNames(c.HWCAP, arm64HWCAP[:], 0, nil)
	}
	return c
}

func armLevel(hwcap uint64, platform string) int {
	level := 5
	switch {
	case hwcap&HWCAP_ARM_VFP != 0 && hwcap&HWCAP_ARM_VFPv3 != 0:
		level = 7
	case hwcap&HWCAP_ARM_VFP != 0:
		level = 6
	}
	if arch := armArch(platform); arch > 0 && arch < level {
		level = max(arch, 5)
	}
	return level
}

// armArch is the architecture version in an ARM AT_PLATFORM string ("v6l"
// is 6, "v8l" 8), or 0 when it is absent or not of that form.
func armArch(platform string) int {
	if len(platform) < 3 || platform[0] != 'v' {
		return 0
	}
	n := 0
	for _, r := range platform[1:] {
		if r < '0' || r > '9' {
			break
		}
		n = n*10 + int(r-'0')
		if n > 99 {
			return 0
		}
	}
	return n
}

// Names of AT_HWCAP bits as the kernel prints them in /proc/cpuinfo.
var armHWCAP = [...]string{"swp", "half", "thumb", "26bit", "fastmult", "fpa", "vfp", "edsp", "java", "iwmmxt", "crunch", "thumbee", "neon", "vfpv3", "vfpv3d16", "tls", "vfpv4", "idiva", "idivt", "vfpd32", "lpae", "evtstrm"}
var armHWCAP2 = [...]string{"aes", "pmull", "sha1", "sha2", "crc32"}
var arm64HWCAP = [...]string{"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"}

func bitNames(h1 uint64, n1 []string, h2 uint64, n2 []string) []string {
	var out []string
	for i, n := range n1 {
		if h1&(1<<uint(i)) != 0 {
			out = append(out, n)
		}
	}
	for i, n := range n2 {
		if h2&(1<<uint(i)) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// x86Feature is one CPUID flag and the GOAMD64 level that requires it (0:
// informational only). The level lists follow the x86-64 psABI levels, as
// the Go runtime checks them at start-up.
type x86Feature struct {
	name  string
	has   *bool
	level int
}

var x86Features = []x86Feature{
	{"sse3", &cpu.X86.HasSSE3, 2}, {"ssse3", &cpu.X86.HasSSSE3, 2}, {"sse4.1", &cpu.X86.HasSSE41, 2}, {"sse4.2", &cpu.X86.HasSSE42, 2},
	{"popcnt", &cpu.X86.HasPOPCNT, 2}, {"cx16", &cpu.X86.HasCX16, 2}, {"lahf", &cpu.X86.HasLAHF, 2},
	{"avx", &cpu.X86.HasAVX, 3}, {"avx2", &cpu.X86.HasAVX2, 3}, {"bmi1", &cpu.X86.HasBMI1, 3}, {"bmi2", &cpu.X86.HasBMI2, 3},
	{"f16c", &cpu.X86.HasF16C, 3}, {"fma", &cpu.X86.HasFMA, 3}, {"lzcnt", &cpu.X86.HasLZCNT, 3}, {"movbe", &cpu.X86.HasMOVBE, 3},
	{"osxsave", &cpu.X86.HasOSXSAVE, 3},
	{"avx512f", &cpu.X86.HasAVX512F, 4}, {"avx512bw", &cpu.X86.HasAVX512BW, 4}, {"avx512cd", &cpu.X86.HasAVX512CD, 4},
	{"avx512dq", &cpu.X86.HasAVX512DQ, 4}, {"avx512vl", &cpu.X86.HasAVX512VL, 4},
	{"aes", &cpu.X86.HasAES, 0}, {"pclmulqdq", &cpu.X86.HasPCLMULQDQ, 0},
}

// x86LevelFeatures lists the flags GOAMD64 level needs beyond level-1.
func x86LevelFeatures(level int) []string {
	var out []string
	for _, f := range x86Features {
		if f.level >= 2 && f.level <= level {
			out = append(out, f.name)
		}
	}
	return out
}

// amd64Level is the highest GOAMD64 level whose flags are all in features.
func amd64Level(features []string) int {
	has := map[string]bool{}
	for _, f := range features {
		has[f] = true
	}
	level := 1
	for l := 2; l <= 4; l++ {
		for _, f := range x86LevelFeatures(l) {
			if !has[f] {
				return level
			}
		}
		level = l
	}
	return level
}

// hostX86Features reads this process's CPUID flags (golang.org/x/sys/cpu,
// which also checks that the OS saves AVX/AVX-512 state). Empty on non-x86.
func hostX86Features() []string {
	if !cpu.X86.HasSSE2 { // always true on amd64; false on every other arch
		return nil
	}
	var out []string
	for _, f := range x86Features {
		if *f.has {
			out = append(out, f.name)
		}
	}
	return out
}

// Label is the short name of what this CPU runs: "armv6", "armv7",
// "arm64", "amd64-v3", "mipsle".
func (c CPUFacts) Label() string {
	switch {
	case c.GOARCH == "arm" && c.ARMLevel > 0:
		return fmt.Sprintf("armv%d", c.ARMLevel)
	case c.GOARCH == "amd64" && c.AMD64Level > 0:
		return fmt.Sprintf("amd64-v%d", c.AMD64Level)
	}
	return c.GOARCH
}

// headline features shown in Summary, per architecture, in order.
var headline = map[string][]string{
	"arm":   {"vfp", "vfpv3", "vfpv4", "neon", "idiva"},
	"arm64": {"asimd", "aes", "crc32", "atomics", "sve"},
	"amd64": {"sse4.2", "avx2", "avx512f", "aes"},
}

func (c CPUFacts) headlineFeatures() []string {
	has := map[string]bool{}
	for _, f := range c.Features {
		has[f] = true
	}
	var out []string
	for _, f := range headline[c.GOARCH] {
		if has[f] {
			out = append(out, f)
		}
	}
	return out
}

func (c CPUFacts) String() string {
	s := c.Label()
	if h := c.headlineFeatures(); len(h) > 0 {
		s += " (" + strings.Join(h, ", ") + ")"
	}
	return s
}
