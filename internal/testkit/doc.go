// Package testkit is shared test support for the edgefleet packages: the
// repository root, `go build` of a package cached per test process, a
// throwaway PKI made with crypto/x509, TEST-ONLY release keys and signed
// bundles made with protocol functions only (never the packer, whose output
// the agent tests must check independently), a test device's agent.yaml,
// a real Mosquitto on a free loopback port, a real 3-node nats-server
// cluster (JetStream + MQTT) with SIGKILL and restart of one node, and a
// polling helper.
//
// It is test support only: it is imported by _test.go files and never by
// non-test code, so no production binary links it (internal/policy
// guards the device agent's dependency list for it). Besides the standard
// library it imports only protocol (and its xz), so the tests of every
// package except protocol may use it without an import cycle.
//
// # Promises
//
//   - Keys and certificates it makes are TEST-ONLY, generated per call and
//     written under the caller's temporary directories.
//   - Built binaries live in one temporary directory per process; call
//     Main from a TestMain to remove it when the tests end.
//   - When a tool a test needs is missing (go, mosquitto, nats-server) it skips the test
//     loudly, saying what is missing and that scripts/test.sh installs it.
//   - Waits are bounded only to stop a hung test; nothing here asserts on
//     speed.
//   - It reads no untrusted input.
package testkit
