package agent

import (
	"errors"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// Sentinel errors, grouped by phase. Every error the agent returns wraps one
// of these (or a protocol sentinel for bundle problems), so callers classify
// with errors.Is. Fatal reports whether retrying the same release can help.
var (
	// ErrConfig: the configuration file is invalid.
	ErrConfig = errors.New("invalid agent configuration")

	// ErrUnsafeDir: data_dir or an app's directory can be changed by a
	// user other than root and the agent's own (owner, group or world
	// write), or something the agent did not create sits at a name it
	// writes (a symbolic link, a hard link). Nothing was changed there; the
	// error names the command that fixes it (safefile.go).
	ErrUnsafeDir = errors.New("directory is not safe for the agent to write in")

	// ErrLocked: the state database is held by another process (normally
	// the daemon); a sideload must go through the control socket instead.
	ErrLocked = errors.New("state database is in use by another edgefleet-agent")

	// ErrCorruptState: the state database cannot be read. The binaries are
	// untouched; `edgefleet-agent reset` moves the file aside.
	ErrCorruptState = errors.New("state database is corrupt")

	// ErrHealthyState: a reset was asked for, but the state database reads
	// fine; nothing was moved (ForceResetState moves it anyway).
	ErrHealthyState = errors.New("state database is healthy")

	// ErrCorruptFloor: the anti-rollback floor file (floor.json) cannot be
	// read. Installs are refused until it is restored or moved aside; the
	// apps keep running. Not fatal: repairing the file lets the same
	// release install.
	ErrCorruptFloor = errors.New("anti-rollback floor file is corrupt")

	// ErrUnknownApp: the bundle or command names an app that is not in the
	// configuration.
	ErrUnknownApp = errors.New("app is not configured on this device")

	// ErrOldSequence: anti-rollback — the release is not newer than what is
	// (or was) installed.
	ErrOldSequence = errors.New("release is not newer than the installed one")

	// ErrIncompatible: the executable cannot run on this device (CPU level,
	// architecture, ELF header, not static). It is hardware's sentinel, so
	// errors.Is works with either name.
	ErrIncompatible = hardware.ErrIncompatible

	// ErrDecoderMemory: the release's xz dictionary (decoder memory) is
	// above this device's limit (limits.max_decoder_memory). Fatal: it
	// must be repacked with a smaller dictionary.
	ErrDecoderMemory = errors.New("release needs more decoder memory than this device allows")

	// ErrNoSpace: not enough free storage, before or while staging.
	ErrNoSpace = errors.New("not enough storage")

	// ErrProbe: the new binary failed its probe (crash, signal, wrong
	// output). Fatal for the release.
	ErrProbe = errors.New("new binary failed its probe")

	// ErrProbeTimeout: the probe did not finish within its timeout. On a
	// loaded device (a download, a fleet of apps, a slow SD card) a good
	// binary can be that slow, so this is transient: the install is tried
	// again with the transport's backoff. A probe that runs and answers
	// wrongly stays ErrProbe.
	ErrProbeTimeout = errors.New("probe timed out")

	// ErrBusy: another install or rollback of the app is in progress, or
	// the app is on trial. Transient: retry later.
	ErrBusy = errors.New("app is busy")

	// ErrNoPrevious: a rollback was asked for but no previous binary is
	// kept.
	ErrNoPrevious = errors.New("no previous version to roll back to")
)

// Fatal reports whether err condemns the release itself (bad signature,
// wrong CPU, old sequence, failed probe…): retrying the same bytes gives the
// same answer, so it is reported and dropped. Other errors (disk full, busy,
// I/O, cancelled) are transient and worth a retry.
func Fatal(err error) bool {
	for _, e := range []error{
		protocol.ErrMalformed, protocol.ErrSchema, protocol.ErrTooLarge,
		protocol.ErrUnknownKey, protocol.ErrBadSignature, protocol.ErrPayloadMismatch, protocol.ErrTruncated,
		protocol.ErrExpired, ErrUnknownApp, ErrOldSequence, ErrIncompatible, ErrProbe, ErrDecoderMemory,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
