// Package hardware describes devices: the built-in device profiles and the
// catalog of known boards that map onto them (profile.go), custom profiles
// from a YAML file, and — on the device — the CPU facts read from the
// auxiliary vector, storage facts from statfs, and the decision whether a
// release's target can execute here.
//
// It imports only the standard library, golang.org/x/sys and yaml, so the
// agent can use it without growing.
//
// # Device facts and the compatibility decision
//
// ReadCPU reads AT_HWCAP, AT_HWCAP2 and AT_PLATFORM from /proc/self/auxv
// (under qemu-user: the emulated core's) and, on amd64, the CPUID flags of
// the x86-64 levels; never /proc/cpuinfo. CPUFacts.CanRun applies the Go
// runtime's own rules (GOARM=6 needs VFP and an ARMv6 core, GOARM=7 also
// VFPv3; GOAMD64=vN needs every flag of x86-64-vN), so a release it accepts
// starts and one it refuses would die with SIGILL or the runtime's refusal;
// tests run every GOARM/GOAMD64 build on emulated cores to hold it to that.
// InspectELF and ELFInfo.Matches check class, machine, byte order, the MIPS
// float ABI (GOMIPS, from the PT_MIPS_ABIFLAGS segment when present) and
// static linking of a payload against its signed target. Every refusal wraps
// ErrIncompatible (fatal for that release, not worth a retry) and is a full
// sentence naming what the binary needs, what this device has, and which
// profile to publish instead.
//
// Untrusted input: ParseAuxv and InspectELF never panic (InspectELF turns a
// panic inside debug/elf into ErrNotExecutable) and read a bounded amount
// (4096 auxv entries; 1024 program headers, 1 MiB of dynamic section, 256
// needed libraries). ReadStorage reports Bavail×Frsize, converting the
// int32 fields of 32-bit targets, and saturates instead of overflowing.
package hardware
