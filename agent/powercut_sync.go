//go:build !edgefleet_powercut_nosync

package agent

// skipStagedSync is false in every real build. Only the power-cut suite's
// proof build (tag edgefleet_powercut_nosync, internal/powercut) sets it,
// to show the suite catches an install path that forgets one fsync.
const skipStagedSync = false
