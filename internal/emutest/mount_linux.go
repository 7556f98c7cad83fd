package emutest

import "syscall"

func mountBinfmt() error {
	return syscall.Mount("binfmt_misc", BinfmtDir, "binfmt_misc", 0, "")
}
