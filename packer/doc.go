// Package packer turns a Go main package into signed edgefleet bundles, one
// per device profile. It is host-side code: the agent never imports it.
//
// Pack runs an ordered list of named steps (see Steps), goreleaser style.
// Two run once per pack, the rest once per profile:
//
//	resolve      go list the package and its dependencies
//	version-var  refuse unless the -X variable is a package-level string var
//	             (the default main.version may be absent: nothing is stamped, with a note)
//	build        go build with CGO_ENABLED=0, -trimpath, -s -w, -buildid=, -X, GOARM/GOAMD64/GOMIPS explicit
//	static       debug/elf: no PT_INTERP, no DT_NEEDED; record ELF class, machine, byte order
//	upx          upx <args>, then upx -t (skipped unless the profile asks;
//	             args: hardware.Profile.UPXArguments, per-GOARCH defaults)
//	budget       the final executable must fit max_binary_size; if not, list the biggest packages and symbols
//	probe        run the final executable under qemu-user with the profile's CPU model
//	             (Options.Probe, or chosen per profile: see probe.go)
//	compress     xz with the profile's dictionary size (or encoding none)
//	hash         payload size, sha256 and per-chunk hashes
//	sign         minisign signature over the exact manifest bytes
//	write        <app>_<version>_<profile>.efb, atomically
//
// Profiles build concurrently (Options.Jobs). Sign and write run only after
// every profile passed every check, so a failed pack writes no bundle. A
// failed version-var check or budget does not stop the other checks: one
// run reports every problem it can find.
//
// # Pack cache
//
// Builds are reproducible (-trimpath, -buildid=), so re-packing unchanged
// code gives the same executable. A content-addressed cache
// (Options.CacheDir: $EDGEFLEET_CACHE or <user cache dir>/edgefleet/pack)
// then skips the slow steps: the xz payload is keyed by the executable's
// sha256, the encoding, the dictionary size and the xz library version; the
// upx output by the input's sha256, the upx version and program hash and the
// arguments; a probe pass by the executable's sha256, the qemu program and
// version, the CPU model, the probe's args and expected output. Failures are
// never cached. Steps served from the cache say "(cached)" in their detail.
// Entries are written atomically (temporary file, rename) and verified
// against their recorded sha256 and size on every read: a damaged entry is
// ignored, the step runs, and the entry is rewritten. The cache is trimmed
// to Options.CacheMaxBytes (1 GiB) by least recent use. A cache that cannot
// be opened or written never fails a pack; Options.NoCache turns it off.
//
// # Promises
//
//   - Reproducible: the same source, toolchain, options and key give
//     byte-identical bundles. The manifest time comes from Options.Created,
//     SOURCE_DATE_EPOCH or the Unix epoch, never from the wall clock unless
//     the caller passes it.
//   - Crash safety: bundles are written to a temporary file in the output
//     directory, fsynced and renamed (protocol.WriteBundleFile); a crash
//     leaves either the old file, the new one, or a stray dot-temp file.
//     Intermediate files live in a temporary directory removed at the end.
//     Cache entries are not fsynced: a torn one fails its sha256 check and
//     is rebuilt; stray temporary files are removed by the next trim.
//   - Memory: binaries and payloads are streamed through files; memory does
//     not grow with the binary size beyond the xz encoder's dictionary.
//   - Untrusted input: the packer trusts the source tree it builds and the
//     tools it runs (go, upx, qemu). Probe output is bounded. It does not
//     read bundles; see protocol for that. The cache directory is trusted
//     like the go build cache: its checks catch damage, not a writer who
//     forges entries with matching hashes.
//
// Every failure wraps one of the sentinels in errors.go.
package packer
