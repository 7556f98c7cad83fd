package hardware

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// ErrIncompatible is wrapped by every refusal from CPUFacts.CanRun,
// ELFInfo.Matches and BestProfile: the release cannot run on this device,
// and retrying will not help (fatal for this release, not transient).
var ErrIncompatible = errors.New("release is not compatible with this device")

// incompatible is an ErrIncompatible whose message is a full sentence.
type incompatible struct{ msg string }

func (e *incompatible) Error() string        { return e.msg }
func (e *incompatible) Is(target error) bool { return target == ErrIncompatible }

func refuse(format string, args ...any) error {
	return &incompatible{msg: fmt.Sprintf(format, args...)}
}

// Target is what a release's executable needs, as the signed manifest
// records it. GOARM, GOAMD64 and GOMIPS are invisible in the ELF header, so
// they come from the manifest, never from the binary.
type Target struct {
	GOOS, GOARCH, GOARM, GOAMD64, GOMIPS string
	// ELFClass is 32 or 64 (0: derive from GOARCH).
	ELFClass int
	// ELFMachine is the machine as debug/elf prints it ("EM_ARM"; "": derive from GOARCH).
	ELFMachine string
	// ELFBigEndian is the byte order; used when ELFMachine is set.
	ELFBigEndian bool
}

func (t Target) String() string {
	s := t.GOOS + "/" + t.GOARCH
	switch {
	case t.GOARM != "":
		s += " GOARM=" + t.GOARM
	case t.GOAMD64 != "":
		s += " GOAMD64=" + t.GOAMD64
	case t.GOMIPS != "":
		s += " GOMIPS=" + t.GOMIPS
	}
	return s
}

// TargetFor is the target a bundle built for profile p carries.
func TargetFor(p Profile) Target {
	t := Target{GOOS: p.GOOS, GOARCH: p.GOARCH, GOARM: p.GOARM, GOAMD64: p.GOAMD64, GOMIPS: p.GOMIPS}
	if e, ok := elfFor(p.GOARCH); ok {
		t.ELFClass, t.ELFMachine, t.ELFBigEndian = e.class, e.machine, e.big
	}
	return t
}

type elfID struct {
	class   int
	machine string
	big     bool
}

func (e elfID) String() string {
	order := "little-endian"
	if e.big {
		order = "big-endian"
	}
	return fmt.Sprintf("%d-bit %s (%s)", e.class, e.machine, order)
}

var elfByGOARCH = map[string]elfID{
	"amd64":    {64, "EM_X86_64", false},
	"386":      {32, "EM_386", false},
	"arm":      {32, "EM_ARM", false},
	"arm64":    {64, "EM_AARCH64", false},
	"mips":     {32, "EM_MIPS", true},
	"mipsle":   {32, "EM_MIPS", false},
	"mips64":   {64, "EM_MIPS", true},
	"mips64le": {64, "EM_MIPS", false},
	"riscv64":  {64, "EM_RISCV", false},
	"ppc64le":  {64, "EM_PPC64", false},
	"s390x":    {64, "EM_S390", true},
	"loong64":  {64, "EM_LOONGARCH", false},
}

// elfFor is the ELF header a Go binary for goarch has.
func elfFor(goarch string) (elfID, bool) {
	e, ok := elfByGOARCH[goarch]
	return e, ok
}

// wantELF is the ELF identity t asks for: its explicit ELF fields, checked
// against its GOARCH when both are known.
func (t Target) wantELF() (elfID, error) {
	derived, known := elfFor(t.GOARCH)
	if t.ELFMachine == "" {
		if !known {
			return elfID{}, refuse("the release's target %s is not an architecture edgefleet knows; re-pack it for a supported profile", t)
		}
		if t.ELFClass != 0 && t.ELFClass != derived.class {
			return elfID{}, refuse("the release's target says %s but ELF class %d, which cannot be; re-pack the release", t, t.ELFClass)
		}
		return derived, nil
	}
	e := elfID{t.ELFClass, t.ELFMachine, t.ELFBigEndian}
	if e.class == 0 && known {
		e.class = derived.class
	}
	if known && e != derived {
		return elfID{}, refuse("the release's target says %s but a %s executable, which cannot be; the bundle was packed wrong — re-pack it", t, e)
	}
	return e, nil
}

// goarmLevel parses GOARM ("5", "6", "7", "6,softfloat"); "" is 7, Go's default.
func goarmLevel(s string) (int, error) {
	v, _, _ := strings.Cut(s, ",")
	if v == "" {
		return 7, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 5 || n > 7 {
		return 0, refuse("the release's target has GOARM=%q, which is not 5, 6 or 7; re-pack it for a supported profile", s)
	}
	return n, nil
}

// goamd64Level parses GOAMD64 ("v1".."v4"); "" is v1, Go's default.
func goamd64Level(s string) (int, error) {
	if s == "" {
		return 1, nil
	}
	if len(s) == 2 && s[0] == 'v' && s[1] >= '1' && s[1] <= '4' {
		return int(s[1] - '0'), nil
	}
	return 0, refuse("the release's target has GOAMD64=%q, which is not v1..v4; re-pack it for a supported profile", s)
}

var armNeedText = map[int]string{
	7: "ARMv7 with VFPv3",
	6: "ARMv6 with VFP",
	5: "ARMv5",
}

// armHaveText describes an ARM CPU: "ARMv6 with VFPv2".
func (c CPUFacts) armHaveText() string {
	arch := "an ARM core"
	if a := armArch(c.Platform); a > 0 {
		arch = fmt.Sprintf("ARMv%d", a)
	}
	switch {
	case c.HWCAP&HWCAP_ARM_VFPv3 != 0 && c.HWCAP&HWCAP_ARM_VFP != 0:
		return arch + " with VFPv3"
	case c.HWCAP&HWCAP_ARM_VFP != 0:
		return arch + " with VFPv2"
	}
	return arch + " without VFP"
}

// SuggestedProfile is the built-in profile this CPU runs that most
// devices run: the most widely compatible one ("linux-amd64" on an
// x86-64-v3 CPU too, "linux-armv5" on any ARM with Linux), for messages
// and defaults. See RunnableProfiles for all of them.
func (c CPUFacts) SuggestedProfile() string {
	if ps := c.RunnableProfiles(); len(ps) > 0 {
		return ps[0].Name
	}
	switch c.GOARCH {
	case "arm":
		if c.ARMLevel >= 5 {
			return fmt.Sprintf("linux-armv%d", c.ARMLevel)
		}
	case "amd64":
		return "linux-amd64"
	}
	return "linux-" + c.GOARCH
}

// suggestion is the "publish ..." advice of a refusal: a build of the
// most widely compatible profile, and the more specific ones this CPU
// also runs.
func (c CPUFacts) suggestion() string {
	ps := c.RunnableProfiles()
	if len(ps) == 0 {
		return "a " + c.SuggestedProfile() + " build for this device"
	}
	s := "a " + ps[0].Name + " build for this device"
	if len(ps) > 1 {
		var more []string
		for _, p := range ps[1:] {
			more = append(more, p.Name)
		}
		s += " (the most widely compatible profile it runs; it also runs " + strings.Join(more, ", ") + ")"
	}
	return s
}

// RunnableProfiles lists the built-in profiles (not the boards) whose
// builds this CPU runs, the most widely compatible first (armv5 before
// armv6 before armv7, amd64 before amd64-v3), ties in the built-in order.
func (c CPUFacts) RunnableProfiles() []Profile {
	var out []Profile
	for _, p := range Profiles() {
		if c.canRun(TargetFor(p), func() string { return "" }) == nil {
			out = append(out, p)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return specificity(TargetFor(out[i])) < specificity(TargetFor(out[j])) })
	return out
}

// CanRun reports whether an executable built for t can run on this CPU:
// nil, or an ErrIncompatible whose full-sentence message says what the
// binary needs, what this CPU has, and what to publish instead.
//
// The rules mirror the Go runtime's own start-up checks: GOARM=6 needs
// AT_HWCAP VFP, GOARM=7 also VFPv3; GOAMD64=vN needs every CPUID flag of
// x86-64-vN. On MIPS the byte order must match (a big-endian mips build
// on a little-endian mipsle device, or the reverse, is refused: the kernel
// would fail it with "exec format error"). GOMIPS=softfloat always runs;
// GOMIPS=hardfloat is accepted because the auxiliary vector does not say
// whether the core has an FPU or the kernel emulates one (Linux's
// CONFIG_MIPS_FPU_EMULATOR; OpenWrt has it off, so there a hardfloat build
// dies with SIGILL, golang/go#18880) — the on-device probe catches that
// before the swap, and every built-in MIPS profile is softfloat.
func (c CPUFacts) CanRun(t Target) error {
	return c.canRun(t, c.suggestion)
}

// canRun is CanRun; suggest names what to publish instead (it is not
// called when the target runs).
func (c CPUFacts) canRun(t Target, suggest func() string) error {
	if t.GOOS != "" && t.GOOS != runtime.GOOS {
		return refuse("this release is built for %s but this device runs %s; publish %s", t.GOOS, runtime.GOOS, suggest())
	}
	if t.GOARCH != c.GOARCH {
		return refuse("this release is built for %s but this agent runs as %s/%s (%s); publish %s", t, runtime.GOOS, c.GOARCH, c, suggest())
	}
	want, err := t.wantELF()
	if err != nil {
		return err
	}
	if have, ok := elfFor(c.GOARCH); ok && want != have {
		return refuse("this release is a %s executable but this CPU runs %s ones; publish %s", want, have, suggest())
	}
	switch c.GOARCH {
	case "arm":
		need, err := goarmLevel(t.GOARM)
		if err != nil {
			return err
		}
		if need > c.ARMLevel {
			cpuName := "this CPU"
			if c.Platform != "" {
				cpuName += " (" + c.Platform + ")"
			}
			return refuse("this release needs %s (GOARM=%d) but %s is %s (AT_HWCAP %#x: %s), which runs GOARM=%d at most; publish %s", armNeedText[need], need, cpuName, c.armHaveText(), c.HWCAP, armHWCAPText(c.HWCAP), c.ARMLevel, suggest())
		}
	case "amd64":
		need, err := goamd64Level(t.GOAMD64)
		if err != nil {
			return err
		}
		if need > c.AMD64Level {
			return refuse("this release needs x86-64-v%d (GOAMD64=v%d) but this CPU supports only x86-64-v%d (CPUID lacks %s); publish %s", need, need, c.AMD64Level, strings.Join(c.missingX86(need), ", "), suggest())
		}
	case "mips", "mipsle":
		if t.GOMIPS != "" && t.GOMIPS != "hardfloat" && t.GOMIPS != "softfloat" {
			return refuse("the release's target has GOMIPS=%q, which is not hardfloat or softfloat; re-pack it for a supported profile", t.GOMIPS)
		}
	}
	return nil
}

func armHWCAPText(h uint64) string {
	var parts []string
	if h&HWCAP_ARM_VFP != 0 {
		parts = append(parts, "VFP")
	} else {
		parts = append(parts, "no VFP")
	}
	if h&HWCAP_ARM_VFPv3 != 0 {
		parts = append(parts, "VFPv3")
	} else {
		parts = append(parts, "no VFPv3")
	}
	return strings.Join(parts, ", ")
}

func (c CPUFacts) missingX86(level int) []string {
	has := map[string]bool{}
	for _, f := range c.Features {
		has[f] = true
	}
	var out []string
	for _, f := range x86LevelFeatures(level) {
		if !has[f] {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		out = []string{"nothing listed (level computed elsewhere)"}
	}
	return out
}

// specificity ranks targets of one GOARCH: higher is more capable code.
// On MIPS softfloat ranks above hardfloat: it never depends on the kernel's
// FPU emulator.
func specificity(t Target) int {
	switch t.GOARCH {
	case "arm":
		n, _ := goarmLevel(t.GOARM)
		return n
	case "amd64":
		n, _ := goamd64Level(t.GOAMD64)
		return n
	case "mips", "mipsle":
		if t.GOMIPS == "softfloat" {
			return 1
		}
	}
	return 0
}

// BestProfile picks, from candidates (profile names in set, e.g. those a
// release was published for), the most specific one this CPU can run:
// armv7 over armv6 over armv5, amd64-v3 over amd64. Ties keep the order of
// candidates. When none fits, the ErrIncompatible error lists each candidate
// and why it was refused.
func BestProfile(c CPUFacts, candidates []string, set *Set) (string, error) {
	if set == nil {
		set = DefaultSet()
	}
	type fit struct {
		name  string
		score int
		pos   int
	}
	var fits []fit
	var why []string
	for i, name := range candidates {
		p, err := set.Lookup(name)
		if err != nil {
			why = append(why, fmt.Sprintf("%s: not a known profile", name))
			continue
		}
		t := TargetFor(p)
		if err := c.CanRun(t); err != nil {
			why = append(why, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		fits = append(fits, fit{name, specificity(t), i})
	}
	if len(fits) == 0 {
		if len(candidates) == 0 {
			return "", refuse("no profiles were offered to choose from for this %s device; publish a %s build", c, c.SuggestedProfile())
		}
		return "", refuse("none of the %d published profiles runs on this %s device (%s); publish a %s build", len(candidates), c, strings.Join(why, "; "), c.SuggestedProfile())
	}
	sort.SliceStable(fits, func(i, j int) bool { return fits[i].score > fits[j].score })
	return fits[0].name, nil
}

// Specificity ranks targets of one GOARCH: higher is more capable code
// (GOARM=7 over 6, GOAMD64=v3 over v1, MIPS softfloat over hardfloat).
func Specificity(t Target) int { return specificity(t) }
