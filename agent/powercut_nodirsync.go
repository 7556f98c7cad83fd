//go:build edgefleet_powercut_nodirsync

package agent

// skipSwapDirSync: this is the power-cut suite's second broken build (tag
// edgefleet_powercut_nodirsync): swapIn does NOT fsync the directory after
// linking <name>.prev nor after the rename. Never ship it; internal/powercut
// builds it to prove that the suite reports the lost link and rename.
const skipSwapDirSync = true
