package hardware

import (
	"fmt"
	"math"
	"strings"
)

// StorageFacts is the space on the filesystem holding Path.
type StorageFacts struct {
	Path string `json:"path"`
	// Free is what an unprivileged writer may still use: f_bavail × f_frsize
	// (not f_bfree, which includes root's reserve).
	Free int64 `json:"free"`
	// Total is f_blocks × f_frsize.
	Total int64 `json:"total"`
}

func (s StorageFacts) String() string {
	return fmt.Sprintf("%s free of %s on %s", Size(s.Free), Size(s.Total), s.Path)
}

// MemoryFacts is this device's RAM.
type MemoryFacts struct {
	Total int64 `json:"total"`
	// Available is MemAvailable (or free + buffers where the kernel lacks it).
	Available int64 `json:"available"`
}

// Facts is what this device is: CPU, storage for the paths asked about,
// memory and kernel.
type Facts struct {
	CPU     CPUFacts       `json:"cpu"`
	Storage []StorageFacts `json:"storage,omitempty"`
	Memory  MemoryFacts    `json:"memory"`
	// Kernel is the uname release ("6.1.0-rpi7-rpi-v6").
	Kernel string `json:"kernel"`
	// Machine is the uname machine ("armv6l"); under qemu-user it is the
	// emulated one.
	Machine string `json:"machine"`
}

// Summary is one line for status reports:
// "armv6 (vfp) · 1.2GiB free on /var/lib/edgefleet · 412MiB RAM".
func (f Facts) Summary() string {
	parts := []string{f.CPU.String()}
	for _, s := range f.Storage {
		parts = append(parts, fmt.Sprintf("%s free on %s", Size(s.Free), s.Path))
	}
	if f.Memory.Total > 0 {
		parts = append(parts, fmt.Sprintf("%s RAM", Size(f.Memory.Total)))
	}
	return strings.Join(parts, " · ")
}

// mulClamp multiplies two non-negative block counts/sizes without
// overflowing int64 (a corrupt or absurd statfs saturates instead of
// turning negative).
func mulClamp(a uint64, b int64) int64 {
	if b <= 0 {
		return 0
	}
	if a != 0 && a > uint64(math.MaxInt64)/uint64(b) {
		return math.MaxInt64
	}
	return int64(a * uint64(b))
}
