package agent

import (
	"os"
	"syscall"
)

// FailpointEnv names the environment variable that arms a failpoint: when
// it equals a failpoint's name, the process kills itself with SIGKILL at
// that point, exactly like a power cut as far as the files on disk and the
// state database are concerned (page cache aside). Tests use it to prove
// that every point of the install, commit and rollback leaves a device that
// Recover brings back to a complete binary.
const FailpointEnv = "EDGEFLEET_FAILPOINT"

// Failpoints lists every named point, in pipeline order.
var Failpoints = []string{
	"stage-after-record",     // staging recorded, no file yet
	"stage-mid",              // staged file half written
	"stage-before-sync",      // staged file written, not fsynced
	"staged-before-record",   // staged file complete and verified
	"probe-before",           // about to probe
	"swap-after-floor",       // floor.json raised, swap not recorded
	"swap-after-record",      // swapping recorded, nothing moved
	"swap-after-remove-prev", // old .prev removed
	"swap-after-link-prev",   // target hard-linked to .prev
	"swap-after-rename",      // staged renamed over the target
	"swap-before-record",     // directory fsynced, trial not recorded
	"commit-before-record",   // commit decided, not recorded
	"rollback-after-record",  // rolling-back recorded, nothing moved
	"rollback-after-link",    // .prev linked to the restore name
	"rollback-after-rename",  // previous binary renamed over the target
	"rollback-before-record", // directory fsynced, rolled-back not recorded
}

var armedFailpoint = os.Getenv(FailpointEnv)

// failpoint kills the process with SIGKILL when name is armed.
func failpoint(name string) {
	if armedFailpoint == "" || armedFailpoint != name {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not catchable; never return.
}
