// Package emutest is test support for running ARM programs under
// qemu-user as whole emulated devices: it registers qemu-arm with
// binfmt_misc so that an emulated agent's children (the probe, the
// supervised app, health commands) run emulated too, on the core that
// QEMU_CPU names.
//
// It is imported by tests only; no production binary links it.
//
// # Promises
//
//   - It changes the machine only when it must and can: it mounts
//     binfmt_misc and registers Debian's /usr/lib/binfmt.d/qemu-arm.conf
//     when running as root and qemu-arm is not registered yet. It never
//     unregisters anything (other tests and tools may rely on it).
//   - When something is missing it says what, and that scripts/test.sh
//     installs it, so a skipped emulation test is loud, never silent.
//   - It reads no untrusted input; it does not crash on a missing or odd
//     binfmt configuration, it reports it.
package emutest
