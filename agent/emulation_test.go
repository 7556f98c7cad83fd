package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/emutest"
)

// emulated runs the ARM test agent on a given core: the agent under
// `qemu-arm -cpu core`, its children (probe) through binfmt_misc with
// QEMU_CPU=core.
func emulated(t *testing.T, k *kit, agentBin, core string, args ...string) (bool, string) {
	t.Helper()
	cmd := exec.Command("qemu-arm", append([]string{"-cpu", core, agentBin, "-config", k.cfgPath}, args...)...)
	cmd.Env = append(os.Environ(), "QEMU_CPU="+core)
	out, err := cmd.CombinedOutput()
	return err == nil, string(out)
}

// needQemuARM skips the test loudly unless qemu-arm runs ARM binaries
// through binfmt_misc (the probe of an ARM binary execs it directly).
func needQemuARM(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-arm"); err != nil {
		t.Skip("SKIP: qemu-arm not found; install qemu-user and qemu-user-binfmt (scripts/test.sh does)")
	}
	if why := emutest.EnsureARMBinfmt(); why != "" {
		t.Skipf("SKIP: %s; the probe of an ARM binary needs it (scripts/test.sh runs as root)", why)
	}
}

// TestEmulatedARMDevices: the agent cross-built for ARMv6 runs as a
// Raspberry Pi Zero (arm1176): it installs an armv6 bundle and refuses an
// armv7 one; as a Pi 2 class core (cortex-a7) it accepts the armv7 one. The
// CPU facts come from the emulated auxiliary vector, the probe runs
// emulated on the same core.
func TestEmulatedARMDevices(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: emulation is slow; not in -short")
	}
	needQemuARM(t)
	agentBin := buildTestAgent(t, target{GOARCH: "arm", GOARM: "6"})
	v6 := target{GOARCH: "arm", GOARM: "6"}
	v7 := target{GOARCH: "arm", GOARM: "7"}

	t.Run("arm1176", func(t *testing.T) {
		k := newKit(t)
		ok, out := emulated(t, k, agentBin, "arm1176", "install", k.bundle(spec{Version: "1.0.0", Sequence: 1, Target: v6, Profile: "linux-armv6"}))
		if !ok {
			t.Fatalf("armv6 bundle on an ARMv6 core refused: %s", out)
		}
		if ok, out := emulated(t, k, agentBin, "arm1176", "commit", "hello"); !ok {
			t.Fatal(out)
		}
		before := fileSum(t, k.appPath)
		ok, out = emulated(t, k, agentBin, "arm1176", "install", k.bundle(spec{Version: "1.1.0", Sequence: 2, Target: v7, Profile: "linux-armv7"}))
		if ok {
			t.Fatalf("armv7 bundle installed on an ARMv6 core: %s", out)
		}
		for _, s := range []string{"GOARM=7", "VFPv3"} {
			if !strings.Contains(out, s) {
				t.Errorf("refusal %q does not say %q", out, s)
			}
		}
		if fileSum(t, k.appPath) != before {
			t.Fatal("the refused install changed the binary")
		}
		t.Logf("arm1176 refuses armv7: %s", strings.TrimSpace(out))
		// The installed ARM binary runs on the emulated core.
		cmd := exec.Command(k.appPath, "--version")
		cmd.Env = append(os.Environ(), "QEMU_CPU=arm1176")
		if b, err := cmd.Output(); err != nil || strings.TrimSpace(string(b)) != "1.0.0" {
			t.Fatalf("installed armv6 hello: %q %v", b, err)
		}
	})
	t.Run("arm1176 probe catches a lying manifest", func(t *testing.T) {
		// An armv7 binary whose manifest claims armv6 passes the CPU check;
		// the probe, run emulated on the ARMv6 core, catches it.
		k := newKit(t)
		bin := buildHello(t, v7, "1.0.0", "")
		ok, out := emulated(t, k, agentBin, "arm1176", "install", k.bundle(spec{Version: "1.0.0", Sequence: 1, Target: v6, Binary: bin}))
		if ok || !strings.Contains(out, "probe") {
			t.Fatalf("mislabelled armv7 binary on ARMv6: ok=%v %s", ok, out)
		}
		if _, err := os.Stat(k.appPath); err == nil {
			t.Fatal("the refused binary reached the app path")
		}
		t.Logf("probe refusal: %s", strings.TrimSpace(out))
	})
	t.Run("cortex-a7", func(t *testing.T) {
		k := newKit(t)
		ok, out := emulated(t, k, agentBin, "cortex-a7", "install", k.bundle(spec{Version: "1.1.0", Sequence: 2, Target: v7, Profile: "linux-armv7"}))
		if !ok {
			t.Fatalf("armv7 bundle on a Cortex-A7 refused: %s", out)
		}
		if _, err := os.Stat(filepath.Dir(k.appPath)); err != nil {
			t.Fatal(err)
		}
	})
}
