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
// The ARM device (TestARMDeviceBootsUpdatesAndSurvivesCut, arm_test.go,
// guest/arm-init.sh) is a Raspberry-Pi-class board: qemu-system-arm -M
// virt -cpu cortex-a7, Debian's armhf armmp kernel, busybox armhf, the
// project's armv7 agent on its disk started at boot by the guest's init
// and restarted when it exits. It installs hello from the host's broker
// (published for linux-armv6 and linux-armv7: it must pick armv7), reports
// the CPU facts it read from that kernel's auxiliary vector (checked to be
// a Cortex-A7's, which differ from qemu-user's), loses power during its
// own update to 2.0.0 published over MQTT, and on the next boot runs an
// allowed agent its database agrees with and installs the hello 1.1.0
// published while it was off. The smoke cuts once (swap-after-rename);
// the long run also cuts at the other self-update points and at random
// moments.
//
// It proves it can fail: TestPowerCutCatchesMissingFsync runs cuts against
// an agent built with the staged file's fsync removed (build tag
// edgefleet_powercut_nosync), TestPowerCutCatchesMissingDirSync against
// one whose swap does not fsync the app's directory (tag
// edgefleet_powercut_nodirsync); each fails if no device comes out
// bricked or degraded. internal/policy checks that no shipped build has
// such a tag.
//
// The shipped systemd units, exercised: TestSystemdUnitsBootAndRescue
// boots a Debian bookworm root filesystem (minbase plus systemd-sysv, built
// by guest/systemd-rootfs.sh with mmdebstrap and cached per recipe hash in
// .tools/powercut/systemd by scripts/powercut.sh --install) with systemd as
// PID 1, docs/systemd's units copied verbatim and enabled with systemctl,
// the agent 2.0.0 as app edgefleet-agent and hello. It checks, from the
// guest's console: the agent starts at boot as the service's main process
// and runs hello, also while systemd-networkd-wait-online still waits for a
// network that is down; a self-update to an agent that exits at start
// hits StartLimitBurst, edgefleet-agent-rescue.service restores
// edgefleet-agent.prev and starts the service again, hello runs again; an
// agent killed at every start (a start limit hit for another reason; the
// long run only) is started again by the rescue unit, which rolls nothing
// back; the unit is Type=notify (active on the agent's READY, its STATUS
// line shown) with a watchdog, and a self-update to an agent that hangs
// at start (the long run only: about eight minutes) is killed by the
// watchdog, times out at each start and is rescued the same way; a power cut
// when the agent re-executes a good update ends, on the next boot under
// systemd, in a working agent that systemctl stop stops gracefully. procd
// (docs/openwrt) is not booted: Debian has no procd.
//
// The tests run only with EDGEFLEET_POWERCUT set and skip loudly without
// qemu-system-x86_64, busybox or the kernel (the ARM device:
// qemu-system-arm, Debian's armmp kernel and busybox armhf in
// .tools/powercut/arm or EDGEFLEET_POWERCUT_ARM; the systemd guest: the
// root filesystem of the current recipe; scripts/powercut.sh --install
// fetches and builds them). smoke (scripts/test.sh): every workload cut once under
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
