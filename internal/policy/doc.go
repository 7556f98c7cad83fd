// Package policy holds repository-wide policy tests: every package has a
// doc comment, and the device agent's dependency list stays small (it never
// imports the packer or a heavy CLI library). It has no non-test code.
package policy
