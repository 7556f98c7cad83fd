package packer

import "errors"

// Sentinel errors, one per kind of failed check. Errors from Pack wrap one
// of them (errors.Is), next to the profile name and a sentence saying what
// to do.
var (
	// ErrOptions: the Options are incomplete or inconsistent.
	ErrOptions = errors.New("invalid pack options")

	// ErrVersionVar: the -X version variable is missing, a const or not a
	// string, so the version would silently not be stamped.
	ErrVersionVar = errors.New("version variable cannot be set with -X")

	// ErrBuild: go build or go list failed.
	ErrBuild = errors.New("build failed")

	// ErrCgo: the program needs cgo, so it cannot be built static with
	// CGO_ENABLED=0.
	ErrCgo = errors.New("program needs cgo")

	// ErrNotStatic: the executable asks for a dynamic loader or shared
	// libraries.
	ErrNotStatic = errors.New("executable is not static")

	// ErrOverBudget: the final executable is bigger than the profile's
	// max_binary_size.
	ErrOverBudget = errors.New("executable over the size budget")

	// ErrUPX: upx is missing, failed, or its output did not pass upx -t.
	ErrUPX = errors.New("upx failed")

	// ErrProbe: the executable did not pass its probe under emulation.
	ErrProbe = errors.New("probe failed under emulation")

	// ErrSkippedWrite: this profile passed, but another failed, so no
	// bundle was written.
	ErrSkippedWrite = errors.New("not written because another profile failed")
)
