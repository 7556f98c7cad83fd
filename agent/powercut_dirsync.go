//go:build !edgefleet_powercut_nodirsync

package agent

// skipSwapDirSync is false in every real build. Only the power-cut
// suite's second proof build (tag edgefleet_powercut_nodirsync,
// internal/powercut) sets it, to show the suite catches a swap that
// forgets the directory fsync.
const skipSwapDirSync = false
