package hardware

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func inspectFile(t testing.TB, path string) ELFInfo {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := InspectELF(f)
	if err != nil {
		t.Fatalf("InspectELF(%s): %v", path, err)
	}
	return info
}

func TestInspectELFCrossBuilt(t *testing.T) {
	for _, tc := range []struct {
		goarch, level, profile string
		class                  int
		machine                string
		bigEndian              bool
		mipsFloat              string
	}{
		{"arm", "5", "linux-armv5", 32, "EM_ARM", false, ""},
		{"arm", "7", "linux-armv7", 32, "EM_ARM", false, ""},
		{"arm64", "", "linux-arm64", 64, "EM_AARCH64", false, ""},
		{"amd64", "v1", "linux-amd64", 64, "EM_X86_64", false, ""},
		{"mipsle", "", "linux-mipsle", 32, "EM_MIPS", false, "softfloat"},
		{"mips", "", "linux-mips", 32, "EM_MIPS", true, "softfloat"},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			info := inspectFile(t, probe(t, tc.goarch, tc.level))
			if info.Class != tc.class || info.Machine != tc.machine || info.BigEndian != tc.bigEndian || info.MIPSFloat != tc.mipsFloat || !info.Static || info.Interp != "" || len(info.Needed) != 0 {
				t.Fatalf("%+v, want a static %d-bit %s (big-endian %v, mips float %q)", info, tc.class, tc.machine, tc.bigEndian, tc.mipsFloat)
			}
			if err := info.Matches(TargetFor(mustProfile(t, tc.profile))); err != nil {
				t.Errorf("its own profile: %v", err)
			}
		})
	}
}

// GOARM is invisible in the ELF header: armv5 and armv7 binaries inspect
// identically, which is why the manifest carries the target.
func TestInspectELFGOARMInvisible(t *testing.T) {
	v5 := inspectFile(t, probe(t, "arm", "5"))
	v7 := inspectFile(t, probe(t, "arm", "7"))
	if !slices.Equal(v5.Needed, v7.Needed) || v5.Class != v7.Class || v5.Machine != v7.Machine || v5.Static != v7.Static {
		t.Errorf("armv5 %+v vs armv7 %+v", v5, v7)
	}
	if err := v7.Matches(TargetFor(mustProfile(t, "linux-armv6"))); err != nil {
		t.Errorf("ELF check cannot tell GOARM apart, yet refused: %v", err)
	}
}

func TestELFMismatchMessages(t *testing.T) {
	arm64 := inspectFile(t, probe(t, "arm64", ""))
	err := arm64.Matches(TargetFor(mustProfile(t, "linux-armv6")))
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("arm64 payload for an armv6 target: %v", err)
	}
	for _, want := range []string{"payload is a 64-bit EM_AARCH64 (little-endian) executable", "linux/arm GOARM=6", "needs a 32-bit EM_ARM (little-endian)", "re-pack"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%v", want, err)
		}
	}
	mips := inspectFile(t, probe(t, "mipsle", ""))
	if err := mips.Matches(Target{GOOS: "linux", GOARCH: "mips", GOMIPS: "softfloat"}); err == nil || !strings.Contains(err.Error(), "big-endian") {
		t.Errorf("little-endian payload for a big-endian target: %v", err)
	}
	// A target whose ELF fields contradict its GOARCH is refused too.
	arm := inspectFile(t, probe(t, "arm", "5"))
	if err := arm.Matches(Target{GOOS: "linux", GOARCH: "arm", GOARM: "5", ELFClass: 64, ELFMachine: "EM_AARCH64"}); err == nil || !strings.Contains(err.Error(), "cannot be") {
		t.Errorf("inconsistent target: %v", err)
	}
}

// A big-endian mips executable on a little-endian mipsle target, and the
// reverse, is refused with a sentence naming both byte orders: the kernel
// would fail it with "exec format error" (qemu-user: "Invalid ELF image for
// this architecture"), which the real binaries show here too.
func TestMIPSByteOrderRefusedBothWays(t *testing.T) {
	for _, tc := range []struct {
		goarch, wrongProfile, qemuOther string
		is, wants                       string
	}{
		{"mips", "linux-mipsle", "qemu-mipsel", "32-bit EM_MIPS (big-endian)", "needs a 32-bit EM_MIPS (little-endian)"},
		{"mipsle", "linux-mips", "qemu-mips", "32-bit EM_MIPS (little-endian)", "needs a 32-bit EM_MIPS (big-endian)"},
	} {
		t.Run(tc.goarch, func(t *testing.T) {
			bin := probe(t, tc.goarch, "softfloat")
			info := inspectFile(t, bin)
			wrong := mustProfile(t, tc.wrongProfile)
			err := info.Matches(TargetFor(wrong))
			if !errors.Is(err, ErrIncompatible) {
				t.Fatalf("%s payload for the %s target: %v, want an ErrIncompatible refusal", tc.goarch, wrong.Name, err)
			}
			for _, want := range []string{"the payload is a " + tc.is + " executable", TargetFor(wrong).String(), tc.wants, "re-pack"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message lacks %q:\n%v", want, err)
				}
			}
			// What the refusal saves the device from.
			if _, stderr, runErr := runProbe(t, tc.qemuOther, "24Kc", bin); runErr == nil {
				t.Errorf("the %s binary ran under %s; the byte orders should be incompatible", tc.goarch, tc.qemuOther)
			} else if !strings.Contains(string(stderr), "Invalid ELF image") {
				t.Logf("%s under %s: %v: %s", tc.goarch, tc.qemuOther, runErr, stderr)
			}
		})
	}
}

// GOMIPS is visible in a Go MIPS executable's PT_MIPS_ABIFLAGS segment:
// a payload whose float ABI contradicts its signed target is refused (a
// hardfloat build on a core without an FPU dies with SIGILL).
func TestMIPSFloatABIChecked(t *testing.T) {
	soft := inspectFile(t, probe(t, "mips", "softfloat"))
	hard := inspectFile(t, probe(t, "mips", "hardfloat"))
	if soft.MIPSFloat != "softfloat" || hard.MIPSFloat != "hardfloat" || !hard.BigEndian {
		t.Fatalf("softfloat build reads %q, hardfloat build %q (big-endian %v)", soft.MIPSFloat, hard.MIPSFloat, hard.BigEndian)
	}
	mips := mustProfile(t, "linux-mips")
	err := hard.Matches(TargetFor(mips))
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("hardfloat payload for the softfloat linux-mips target: %v", err)
	}
	for _, want := range []string{"GOMIPS=hardfloat executable", "linux/mips GOMIPS=softfloat", "SIGILL", "re-pack"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%v", want, err)
		}
	}
	if err := soft.Matches(Target{GOOS: "linux", GOARCH: "mips"}); err == nil || !strings.Contains(err.Error(), "says GOMIPS=hardfloat") {
		t.Errorf("softfloat payload for a target without GOMIPS (Go's default hardfloat): %v", err)
	}
	if err := hard.Matches(Target{GOOS: "linux", GOARCH: "mips", GOMIPS: "hardfloat"}); err != nil {
		t.Errorf("hardfloat payload for a hardfloat target: %v", err)
	}
	// UPX drops the ABI flags: the float ABI is then unknown, not refused.
	b, err := os.ReadFile(probe(t, "mips", "hardfloat"))
	if err != nil {
		t.Fatal(err)
	}
	noFlags, err := InspectELF(bytes.NewReader(withoutABIFlags(b)))
	if err != nil || noFlags.MIPSFloat != "" {
		t.Fatalf("without PT_MIPS_ABIFLAGS: %+v, %v", noFlags, err)
	}
	if err := noFlags.Matches(TargetFor(mips)); err != nil {
		t.Errorf("unknown float ABI refused: %v", err)
	}
}

// withoutABIFlags turns the PT_MIPS_ABIFLAGS program header of a 32-bit
// MIPS ELF image into PT_NULL.
func withoutABIFlags(b []byte) []byte {
	b = bytes.Clone(b)
	order := binary.ByteOrder(binary.LittleEndian)
	if b[5] == byte(elf.ELFDATA2MSB) {
		order = binary.BigEndian
	}
	phoff, phentsize, phnum := order.Uint32(b[28:]), order.Uint16(b[42:]), order.Uint16(b[44:])
	for i := range uint32(phnum) {
		ph := b[phoff+i*uint32(phentsize):]
		if elf.ProgType(order.Uint32(ph)) == elf.PT_MIPS_ABIFLAGS {
			order.PutUint32(ph, uint32(elf.PT_NULL))
		}
	}
	return b
}

func TestInspectELFDynamic(t *testing.T) {
	ls, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("SKIP: no ls binary on PATH")
	}
	ls, _ = filepath.EvalSymlinks(ls)
	info := inspectFile(t, ls)
	if info.Static || !strings.Contains(info.Interp, "ld-") || !slices.Contains(info.Needed, "libc.so.6") {
		t.Fatalf("%s: %+v, want dynamic with an ld.so interpreter and libc.so.6", ls, info)
	}
	host := Target{GOOS: "linux", GOARCH: runtime.GOARCH}
	err = info.Matches(host)
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("a dynamic binary matched: %v", err)
	}
	for _, want := range []string{"dynamically linked", "interpreter " + info.Interp, "libc.so.6", "CGO_ENABLED=0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%v", want, err)
		}
	}
}

// UPX strips section headers; the packed binary still reads as static.
func TestInspectELFUPX(t *testing.T) {
	upx := os.Getenv("EDGEFLEET_UPX")
	if upx == "" {
		upx, _ = exec.LookPath("upx")
	}
	if upx == "" {
		if p, err := filepath.Abs("../.tools/bin/upx"); err == nil {
			if _, err := os.Stat(p); err == nil {
				upx = p
			}
		}
	}
	if upx == "" {
		t.Skip("SKIP: upx not found ($EDGEFLEET_UPX, PATH, .tools/bin/upx); scripts/test.sh installs it")
	}
	src, err := os.ReadFile(probe(t, "arm", "6"))
	if err != nil {
		t.Fatal(err)
	}
	packed := filepath.Join(t.TempDir(), "probe")
	if err := os.WriteFile(packed, src, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(upx, "-q", "-1", packed).CombinedOutput(); err != nil {
		t.Fatalf("upx: %v\n%s", err, out)
	}
	info := inspectFile(t, packed)
	if info.Class != 32 || info.Machine != "EM_ARM" || !info.Static {
		t.Errorf("UPX-packed armv6 binary: %+v", info)
	}
	if err := info.Matches(TargetFor(mustProfile(t, "linux-armv6"))); err != nil {
		t.Errorf("UPX-packed armv6 binary vs its target: %v", err)
	}
}

func TestInspectELFNotExecutable(t *testing.T) {
	for name, b := range map[string][]byte{
		"shell script": []byte("#!/bin/sh\necho hi\n"),
		"empty":        nil,
		"elf magic":    []byte("\x7fELF"),
	} {
		if _, err := InspectELF(bytes.NewReader(b)); !errors.Is(err, ErrNotExecutable) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A relocatable object (ET_REL) is an ELF file but not an executable.
	hdr := elfHeader64(elf.ET_REL)
	if _, err := InspectELF(bytes.NewReader(hdr)); !errors.Is(err, ErrNotExecutable) || !strings.Contains(err.Error(), "ET_REL") {
		t.Errorf("ET_REL: %v", err)
	}
}

// elfHeader64 is a minimal little-endian x86-64 ELF header of type typ with
// no program or section headers.
func elfHeader64(typ elf.Type) []byte {
	b := make([]byte, 64)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	b[16] = byte(typ)
	b[18] = byte(elf.EM_X86_64)
	b[20] = 1
	b[52] = 64 // e_ehsize
	return b
}

func FuzzInspectELF(f *testing.F) {
	seed := func(path string, n int) {
		fh, err := os.Open(path)
		if err != nil {
			return
		}
		defer fh.Close()
		b, _ := io.ReadAll(io.LimitReader(fh, int64(n)))
		f.Add(b)
	}
	// Real binaries' first bytes (headers, program headers, start of text)
	// and a whole small dynamic binary.
	for _, p := range []struct{ goarch, level string }{{"arm", "5"}, {"arm64", ""}, {"amd64", "v1"}, {"mipsle", ""}, {"mips", ""}, {"mips", "hardfloat"}} {
		path := probe(f, p.goarch, p.level)
		seed(path, 8<<10)
		// The same bytes with section headers dropped, as UPX leaves a
		// binary: debug/elf then reads the program headers only.
		if b, err := os.ReadFile(path); err == nil && len(b) > 8<<10 {
			f.Add(withoutSections(b[:8<<10]))
		}
	}
	if tr, err := exec.LookPath("true"); err == nil {
		seed(tr, 1<<20)
	}
	f.Add(elfHeader64(elf.ET_EXEC))
	f.Add(elfHeader64(elf.ET_DYN))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := InspectELF(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrNotExecutable) {
				t.Fatalf("error does not wrap ErrNotExecutable: %v", err)
			}
			return
		}
		if info.Class != 32 && info.Class != 64 {
			t.Fatalf("class %d", info.Class)
		}
		if info.Static != (info.Interp == "" && len(info.Needed) == 0) {
			t.Fatalf("Static %v with interp %q needed %v", info.Static, info.Interp, info.Needed)
		}
		if len(info.Needed) > maxNeeded || len(info.Interp) > maxELFStringSize {
			t.Fatalf("unbounded: %d needed, interp of %d bytes", len(info.Needed), len(info.Interp))
		}
		_ = info.Matches(Target{GOOS: "linux", GOARCH: "arm", GOARM: "6"})
		_ = info.Matches(Target{GOOS: "linux", GOARCH: "mips", GOMIPS: "softfloat"})
		if info.MIPSFloat != "" && info.MIPSFloat != "softfloat" && info.MIPSFloat != "hardfloat" {
			t.Fatalf("MIPSFloat %q", info.MIPSFloat)
		}
	})
}

// withoutSections zeroes e_shoff, e_shnum and e_shstrndx of an ELF image.
func withoutSections(b []byte) []byte {
	b = bytes.Clone(b)
	order := binary.ByteOrder(binary.LittleEndian)
	if b[5] == byte(elf.ELFDATA2MSB) {
		order = binary.BigEndian
	}
	if b[4] == byte(elf.ELFCLASS32) {
		order.PutUint32(b[32:], 0) // e_shoff
		order.PutUint16(b[48:], 0) // e_shnum
		order.PutUint16(b[50:], 0) // e_shstrndx
	} else {
		order.PutUint64(b[40:], 0)
		order.PutUint16(b[60:], 0)
		order.PutUint16(b[62:], 0)
	}
	return b
}

func TestInspectELFWithoutSections(t *testing.T) {
	b, err := os.ReadFile(probe(t, "arm64", ""))
	if err != nil {
		t.Fatal(err)
	}
	info, err := InspectELF(bytes.NewReader(withoutSections(b)))
	if err != nil || !info.Static || info.Machine != "EM_AARCH64" {
		t.Errorf("section-less arm64 binary: %+v %v", info, err)
	}
}

func BenchmarkInspectELF(b *testing.B) {
	f, err := os.Open(probe(b, "arm", "6"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := InspectELF(f); err != nil {
			b.Fatal(err)
		}
	}
}
