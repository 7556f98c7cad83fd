//go:build linux

package hardware

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadCPU reads this process's CPU facts from /proc/self/auxv, parsed with
// the word size and byte order of the running binary (under qemu-user that
// file shows the emulated CPU). Where /proc is not readable it falls back to
// the runtime's own copy of the vector. On amd64 the GOAMD64 level comes from
// CPUID.
func ReadCPU() (CPUFacts, error) {
	var aux map[uint64]uint64
	raw, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		aux, err = ParseAuxv(raw, int(unsafe.Sizeof(uintptr(0))), nativeBigEndian())
	}
	rt, rtErr := unix.Auxv()
	if err != nil {
		if rtErr != nil {
			return CPUFacts{GOARCH: runtime.GOARCH}, fmt.Errorf("read CPU facts from the auxiliary vector: %w (the runtime's copy is unavailable too: %v); this device's CPU cannot be checked", err, rtErr)
		}
		aux = map[uint64]uint64{}
		for _, kv := range rt {
			if _, dup := aux[uint64(kv[0])]; !dup && kv[0] != AT_NULL {
				aux[uint64(kv[0])] = uint64(kv[1])
			}
		}
	}
	platform := ""
	if p := aux[AT_PLATFORM]; p != 0 {
		// AT_PLATFORM is an address in this process. Read it only when the
		// runtime's own vector (from the initial stack) holds the same address.
		for _, kv := range rt {
			if kv[0] == AT_PLATFORM && uint64(kv[1]) == p {
				platform = cString(kv[1], 64)
			}
		}
	}
	c := CPUFactsFromAuxv(runtime.GOARCH, aux, platform)
	if runtime.GOARCH == "amd64" {
		c.Features = hostX86Features()
		c.AMD64Level = amd64Level(c.Features)
	}
	return c, nil
}

// cString reads a NUL-terminated string of at most max bytes at addr, an
// address the kernel put in the auxiliary vector (the initial stack).
func cString(addr uintptr, max int) string {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	b := unsafe.Slice((*byte)(p), max)
	for i := range b {
		if b[i] == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func nativeBigEndian() bool {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	return b[0] == 0
}
