//go:build unix

package fleet

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's soft open-file limit
// (RLIMIT_NOFILE) to its hard limit: a broker needs one descriptor per
// client, and the usual soft default of 1024 stops it near 1,000 devices.
// It returns the limits in force afterwards.
func RaiseFileLimit() (soft, hard uint64, err error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	if r.Cur < r.Max {
		want := r
		want.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(r.Cur), uint64(r.Max), fmt.Errorf("raise the open-file limit from %d to %d: %w", r.Cur, r.Max, err)
		}
		r = want
	}
	return uint64(r.Cur), uint64(r.Max), nil
}

// FileLimitString describes the current open-file limits for messages.
func FileLimitString() string {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return "unknown"
	}
	return fmt.Sprintf("soft %d, hard %d", r.Cur, r.Max)
}
