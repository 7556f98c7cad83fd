//go:build !linux

package hardware

import (
	"errors"
	"runtime"
)

// ReadCPU is only implemented on Linux, where the auxiliary vector is read.
func ReadCPU() (CPUFacts, error) {
	return CPUFacts{GOARCH: runtime.GOARCH}, errors.New("reading CPU facts needs Linux (/proc/self/auxv); devices run Linux")
}
