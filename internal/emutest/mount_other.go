//go:build !linux

package emutest

import "errors"

func mountBinfmt() error {
	return errors.New("binfmt_misc exists on Linux only")
}
