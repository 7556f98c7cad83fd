package hardware

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrNotExecutable is wrapped when InspectELF is given something that is not
// an ELF executable (or is too damaged to read).
var ErrNotExecutable = errors.New("not an ELF executable")

// Bounds on what InspectELF reads from untrusted input.
const (
	maxELFProgs      = 1024
	maxDynamicBytes  = 1 << 20
	maxNeeded        = 256
	maxELFStringSize = 4096
)

// ELFInfo is what the ELF header and program headers of an executable say.
type ELFInfo struct {
	// Class is 32 or 64.
	Class int `json:"class"`
	// Machine is as debug/elf prints it: "EM_ARM", "EM_AARCH64", "EM_X86_64".
	Machine   string `json:"machine"`
	BigEndian bool   `json:"big_endian"`
	// Static is true when there is no PT_INTERP and no DT_NEEDED.
	Static bool `json:"static"`
	// Interp is the PT_INTERP program interpreter ("/lib/ld-linux-armhf.so.3").
	Interp string `json:"interp,omitempty"`
	// Needed are the DT_NEEDED shared libraries.
	Needed []string `json:"needed,omitempty"`
	// MIPSFloat, on MIPS, is the float ABI the PT_MIPS_ABIFLAGS segment
	// records: "softfloat" (fp_abi soft, Go's GOMIPS=softfloat) or
	// "hardfloat" (any FPU ABI, Go's GOMIPS=hardfloat). Empty when the
	// segment is absent (UPX drops it) or says nothing about floats.
	MIPSFloat string `json:"mips_float,omitempty"`
}

func (e ELFInfo) id() elfID { return elfID{e.Class, e.Machine, e.BigEndian} }

// InspectELF reads the identity and linkage of an executable with
// debug/elf. The input is untrusted: InspectELF never panics (a panic inside
// debug/elf is turned into an error), reads at most a bounded amount
// (1024 program headers, 1 MiB of dynamic section, 256 needed libraries),
// and refuses anything that is not an ET_EXEC or ET_DYN file.
func InspectELF(r io.ReaderAt) (info ELFInfo, err error) {
	defer func() {
		if p := recover(); p != nil {
			info, err = ELFInfo{}, fmt.Errorf("%w: the ELF reader failed on malformed input (%v)", ErrNotExecutable, p)
		}
	}()
	f, err := elf.NewFile(r)
	if err != nil {
		return ELFInfo{}, fmt.Errorf("%w: %w", ErrNotExecutable, err)
	}
	defer f.Close()
	switch f.Class {
	case elf.ELFCLASS32:
		info.Class = 32
	case elf.ELFCLASS64:
		info.Class = 64
	default:
		return ELFInfo{}, fmt.Errorf("%w: unknown ELF class %v", ErrNotExecutable, f.Class)
	}
	info.Machine = f.Machine.String()
	info.BigEndian = f.ByteOrder == binary.BigEndian
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return ELFInfo{}, fmt.Errorf("%w: ELF type is %v, not an executable", ErrNotExecutable, f.Type)
	}
	if len(f.Progs) > maxELFProgs {
		return ELFInfo{}, fmt.Errorf("%w: %d program headers is absurd", ErrNotExecutable, len(f.Progs))
	}
	var dynProg *elf.Prog
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			s, err := readCString(p.Open(), maxELFStringSize)
			if err != nil {
				return ELFInfo{}, fmt.Errorf("%w: PT_INTERP: %w", ErrNotExecutable, err)
			}
			if s == "" {
				s = "(empty PT_INTERP)"
			}
			info.Interp = s
		case elf.PT_DYNAMIC:
			dynProg = p
		case elf.PT_MIPS_ABIFLAGS:
			if f.Machine == elf.EM_MIPS {
				info.MIPSFloat = mipsFloatABI(p)
			}
		}
	}
	if ds := f.SectionByType(elf.SHT_DYNAMIC); ds != nil {
		if ds.Size > maxDynamicBytes {
			return ELFInfo{}, fmt.Errorf("%w: dynamic section of %d bytes is absurd", ErrNotExecutable, ds.Size)
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return ELFInfo{}, fmt.Errorf("%w: reading DT_NEEDED: %w", ErrNotExecutable, err)
		}
		if len(libs) > maxNeeded {
			libs = libs[:maxNeeded]
		}
		info.Needed = libs
	} else if dynProg != nil {
		// Section headers stripped (as UPX does) but a PT_DYNAMIC segment:
		// count DT_NEEDED entries; their names need the string table's
		// address mapping, which is not worth trusting here.
		n, err := countNeeded(f, dynProg)
		if err != nil {
			return ELFInfo{}, fmt.Errorf("%w: PT_DYNAMIC: %w", ErrNotExecutable, err)
		}
		for i := 0; i < n && i < maxNeeded; i++ {
			info.Needed = append(info.Needed, "(unnamed: section headers stripped)")
		}
	}
	info.Static = info.Interp == "" && len(info.Needed) == 0
	return info, nil
}

// MIPS fp_abi values of the ABI flags (Val_GNU_MIPS_ABI_FP_*), as Go's
// linker writes them: MIPS_FPABI_ANY for hardfloat, MIPS_FPABI_SOFT for
// softfloat.
const (
	mipsFPABINone = 0
	mipsFPABISoft = 3
)

// mipsFloatABI reads fp_abi, byte 7 of the 24-byte Elf_Internal_ABIFlags_v0
// in a PT_MIPS_ABIFLAGS segment: "softfloat", "hardfloat", or "" when
// unreadable or unspecified.
func mipsFloatABI(p *elf.Prog) string {
	var b [8]byte
	if p.Filesz < 24 {
		return ""
	}
	if _, err := io.ReadFull(p.Open(), b[:]); err != nil {
		return ""
	}
	switch b[7] {
	case mipsFPABINone:
		return ""
	case mipsFPABISoft:
		return "softfloat"
	}
	return "hardfloat"
}

func readCString(r io.Reader, max int) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(max)))
	if err != nil {
		return "", err
	}
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b), nil
}

func countNeeded(f *elf.File, p *elf.Prog) (int, error) {
	if p.Filesz > maxDynamicBytes {
		return 0, fmt.Errorf("%d bytes is absurd", p.Filesz)
	}
	b, err := io.ReadAll(io.LimitReader(p.Open(), maxDynamicBytes))
	if err != nil {
		return 0, err
	}
	word := 8
	if f.Class == elf.ELFCLASS32 {
		word = 4
	}
	n := 0
	for i := 0; i+2*word <= len(b); i += 2 * word {
		var tag uint64
		if word == 4 {
			tag = uint64(f.ByteOrder.Uint32(b[i:]))
		} else {
			tag = f.ByteOrder.Uint64(b[i:])
		}
		if elf.DynTag(tag) == elf.DT_NULL {
			break
		}
		if elf.DynTag(tag) == elf.DT_NEEDED {
			n++
		}
	}
	return n, nil
}

// Matches checks the executable against the release's target: ELF class,
// machine and byte order as the target implies, on MIPS the float ABI
// (GOMIPS) when the ABI flags record it, and static linking (a device has
// no guarantee of any libc). A refusal wraps ErrIncompatible and says what
// the payload is and what the target wanted.
func (e ELFInfo) Matches(t Target) error {
	want, err := t.wantELF()
	if err != nil {
		return err
	}
	if e.id() != want {
		return refuse("the payload is a %s executable but the signed target %s needs a %s one; the bundle was packed wrong or tampered with — re-pack it", e.id(), t, want)
	}
	if e.Machine == "EM_MIPS" && e.Class == 32 && e.MIPSFloat != "" { // GOMIPS; mips64 has GOMIPS64
		gomips := t.GOMIPS
		if gomips == "" {
			gomips = "hardfloat" // Go's default
		}
		if e.MIPSFloat != gomips {
			return refuse("the payload is a GOMIPS=%s executable (its MIPS ABI flags say so) but the signed target %s says GOMIPS=%s; a hardfloat build dies with SIGILL on a MIPS core without an FPU (OpenWrt kernels emulate none) — re-pack it with the profile's gomips", e.MIPSFloat, t, gomips)
		}
	}
	if !e.Static {
		var what []string
		if e.Interp != "" {
			what = append(what, "interpreter "+e.Interp)
		}
		if len(e.Needed) > 0 {
			what = append(what, "libraries "+strings.Join(e.Needed, ", "))
		}
		return refuse("the payload is dynamically linked (%s), and a device has no guaranteed libc; build it with CGO_ENABLED=0 (edgefleet pack does) and re-pack", strings.Join(what, "; "))
	}
	return nil
}
