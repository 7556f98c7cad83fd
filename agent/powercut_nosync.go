//go:build edgefleet_powercut_nosync

package agent

// skipStagedSync: this is the power-cut suite's broken build (tag
// edgefleet_powercut_nosync): the staged file is NOT fsynced before the
// swap. Never ship it; internal/powercut builds it to prove that the suite
// reports the bricked and degraded devices this causes.
const skipStagedSync = true
