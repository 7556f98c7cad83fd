//go:build !unix

package fleet

// RaiseFileLimit does nothing where there is no RLIMIT_NOFILE.
func RaiseFileLimit() (soft, hard uint64, err error) { return 0, 0, nil }

// FileLimitString describes the current open-file limits for messages.
func FileLimitString() string { return "unknown" }
