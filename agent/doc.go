// Package agent is the device side of edgefleet: it installs signed
// bundles for the configured apps, keeps their state in a bbolt database,
// commits or rolls back after a trial, and recovers whatever a crash or a
// power cut left half done. The daemon, supervisor and control socket that
// drive it live in this package too (daemon.go, supervisor.go, control.go).
//
// It imports protocol and hardware, never packer: the device binary stays
// small (a test guards it).
//
// # The install pipeline
//
// verify (signature, app, anti-rollback sequence, expiry, sizes) → compat
// (signed target against the CPU's auxiliary vector; after staging, the ELF
// header and static linking) → storage (free space for the new binary plus
// the manifest's reserve) → stage (stream, decode, hash into
// .<name>.staged next to the target, fsync) → probe (run the staged binary
// under a timeout) → swap (keep <name>.prev as a hard link and fsync the
// directory, rename over the target, fsync the directory again) → trial. Each step is recorded in the state
// database before it acts.
//
// # Promises about crashes
//
//   - At every moment, including a SIGKILL or power cut at any instruction,
//     the app's path holds a complete executable: the old one or the new
//     one, never a partial file and never nothing (once something was
//     installed). rename(2) is the only operation that changes it.
//   - Recover, run at every daemon start, finishes or undoes an interrupted
//     step by comparing the recorded step with the sha256 of the files on
//     disk. Every recovery step is idempotent.
//   - Failpoints (failpoint.go, env EDGEFLEET_FAILPOINT) kill the process
//     at each named point; the tests prove the two promises above there.
//   - A state database that cannot be read never bricks the device: Open
//     returns ErrCorruptState naming the file, the binaries are untouched,
//     and ResetState / `edgefleet-agent reset` moves the file aside.
//   - Anti-rollback survives that reset: the highest sequence ever swapped
//     in per app is also kept in data_dir/floor.json (floor.go; versioned,
//     parsed strictly, written with a temporary file, fsync and rename),
//     which reset never touches; Install and Check refuse a sequence at
//     or below the higher of the database's and the file's floor, so
//     corrupting state.db cannot bring back an older signed release. The
//     file floor is raised before the swap is recorded and the rename
//     happens, so it is never behind a release the target or the database
//     holds; an install undone before the rename lowers it back to its
//     value before that install. A corrupt floor file never bricks either:
//     the apps keep running, installs are refused with ErrCorruptFloor
//     naming the file and what to do (restore it, or move it aside: Open
//     rebuilds it from the state database).
//
// # Promises about memory
//
// A payload is never held in memory: staging copies through one 64 KiB
// buffer; the bundle reader holds one chunk (at most the manifest's chunk
// size) and the xz decoder its signed dictionary size. Memory does not grow
// with the payload. The dictionary is checked against this device's limit
// (limits.max_decoder_memory; default a quarter of MemAvailable at Open,
// between 1MiB and 64MiB) before anything is fetched or staged: a larger
// one is refused with ErrDecoderMemory (fatal; repack with a smaller
// xz_dict_size). The decoder allocates the larger of the manifest's size and
// the one the xz stream's own header declares, so the limit holds for
// streams the packer wrote (both equal); a signed stream declaring more than
// its manifest is a protocol-level gap (DecodePayload does not refuse it).
//
// A delta release (delta.go, transport_delta.go; SPEC.md §8.10) is applied
// the same way: the verified patch is spooled to an unlinked file, the
// installed executable is read at the offsets the patch names, the result
// is written sequentially into the staging file through fixed buffers,
// plus three bzip2 decoders whose signed block-size level is checked
// against the same decoder limit (about 4.4 MiB at the packer's level 5).
// A delta that cannot be used (another base, a refused patch, a result
// that does not match) wraps ErrDelta, changes nothing, and the MQTT
// transport fetches the full release instead.
//
// # Promises about untrusted input
//
// Nothing from a bundle is trusted before its manifest signature verified
// against a configured key, except a key set it carries, which is trusted
// only when a threshold of the roots held signed it (bundle_keyset.go); no payload byte is written before its chunk
// hash matched; the staged file reaches the target path only after its
// size and sha256 matched the signed manifest, its ELF header matched the
// signed target and its probe passed. Refusals are full sentences saying
// what is wrong and what to do; Fatal tells a release that will never
// install from a transient failure.
//
// The device's own filesystem is untrusted too, wherever another user can
// write (safefile.go): data_dir and each app's directory must be changeable
// only by root or the agent's user, every component of their path checked
// (ErrUnsafeDir otherwise, nothing changed); the files the agent creates
// there are created with O_CREAT|O_EXCL|O_NOFOLLOW, never through a link.
// Replies on the control socket are parsed strictly (DecodeResponse).
package agent
