// Package powercut is edgefleet's power-cut suite: whole emulated machines
// (Debian's kernel under qemu-system-x86_64 with TCG, an initramfs with
// busybox, the project's static edgefleet-agent and the sample app, a raw
// ext4 disk with cache=writeback) that run an install workload and lose
// power — SIGKILL of qemu, which loses exactly what the guest kernel had
// not written to the disk yet — at random moments and at every named
// failpoint (agent.Failpoints, the delta's agent.DeltaFailpoint and the
// MQTT download's mqtt-after-chunk).
//
// Workloads: sideload, daemon install with trial, rollback, MQTT download,
// a signed bsdiff delta 1.0.0→1.1.0 sideloaded, the same delta received
// over MQTT (mqttdelta: the device finds it on
// edgefleet/v1/delta/hello/<result>/<its base>, SPEC.md §8.10), and the
// agent updating itself (app edgefleet-agent 1.0.0→2.0.0 on the disk,
// re-exec, trial, commit, under a respawning init). The next boot checks
// that the app path (and the agent's) runs an allowed version, that the
// state database agrees with it after recovery, that no acknowledged step
// was lost, and that the next install commits; for mqttdelta it first
// lets the device finish 1.1.0 from the broker and records whether it did
// so by the delta or fell back to the full release (both allowed). Each
// cut is reported survived, degraded or bricked, per workload, mount
// option set and cut point.
//
// It proves it can fail: TestPowerCutCatchesMissingFsync runs cuts against
// an agent built with the staged file's fsync removed (build tag
// edgefleet_powercut_nosync), TestPowerCutCatchesMissingDirSync against
// one whose swap does not fsync the app's directory (tag
// edgefleet_powercut_nodirsync); each fails if no device comes out
// bricked or degraded. internal/policy checks that no shipped build has
// such a tag.
//
// The tests run only with EDGEFLEET_POWERCUT set and skip loudly without
// qemu-system-x86_64, busybox or the kernel (scripts/powercut.sh --install
// fetches them). smoke (scripts/test.sh): every workload cut once under
// one mount option set (rotating), at a random moment or at a drawn
// failpoint it passes, the mqttdelta workload once more at one of its own
// points, and 2 cuts per proof, where the broken builds are caught: 12
// cuts, no calibration, the three tests in parallel on
// EDGEFLEET_POWERCUT_JOBS machines (default 2). The draws come from a seed
// every test logs; EDGEFLEET_POWERCUT_SEED=<it> repeats a run's plan.
// long (scripts/powercut.sh --long N): each workload calibrated uncut,
// then N cuts (every failpoint with every workload that passes it, random
// moments, after-done), and the proofs under every mount set. Nothing
// here is shipped.
package powercut
