// Package hardware describes devices: the built-in device profiles and the
// catalog of known boards that map onto them (profile.go), custom profiles
// from a YAML file, and — on the device — the CPU facts read from the
// auxiliary vector, storage facts from statfs, and the decision whether a
// release's target can execute here.
//
// It imports only the standard library, golang.org/x/sys and yaml, so the
// agent can use it without growing.
package hardware
