package emutest

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// BinfmtDir is where the kernel's binfmt_misc interface is mounted.
const BinfmtDir = "/proc/sys/fs/binfmt_misc"

// ARMConf is Debian's (qemu-user-binfmt) registration line file for
// qemu-arm.
const ARMConf = "/usr/lib/binfmt.d/qemu-arm.conf"

var armOnce struct {
	sync.Once
	why string
}

// EnsureARMBinfmt makes ARM executables run directly (through qemu-arm),
// so that children of an emulated program run emulated too, on the core
// QEMU_CPU names. It mounts binfmt_misc and registers Debian's qemu-arm
// line when root and not yet registered. It returns "" when ARM binaries
// can be executed directly, otherwise why not. It does its work once per
// process.
func EnsureARMBinfmt() string {
	armOnce.Do(func() { armOnce.why = ensureARMBinfmt() })
	return armOnce.why
}

// RequireARM skips t, loudly and with what to install, unless qemu-arm is
// on PATH and registered with binfmt_misc (registering it when possible).
// It also skips in -short mode: emulation is slow.
func RequireARM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIP: emulation is slow; not in -short")
	}
	if _, err := exec.LookPath("qemu-arm"); err != nil {
		t.Skip("SKIP: qemu-arm not found; install qemu-user and qemu-user-binfmt (scripts/test.sh does)")
	}
	if why := EnsureARMBinfmt(); why != "" {
		t.Skipf("SKIP: %s; an emulated device's children need it (scripts/test.sh runs as root)", why)
	}
}

func ensureARMBinfmt() string {
	if _, err := os.Stat(BinfmtDir + "/qemu-arm"); err == nil {
		return ""
	}
	if os.Geteuid() != 0 {
		return "qemu-arm is not registered with binfmt_misc and registering it needs root"
	}
	if _, err := os.Stat(BinfmtDir + "/register"); err != nil {
		if err := mountBinfmt(); err != nil {
			return "cannot mount binfmt_misc: " + err.Error()
		}
	}
	conf, err := os.ReadFile(ARMConf)
	if err != nil {
		return "no " + ARMConf + " (install qemu-user-binfmt; scripts/test.sh does)"
	}
	for _, line := range strings.Split(string(conf), "\n") {
		if !strings.HasPrefix(line, ":") {
			continue
		}
		if err := os.WriteFile(BinfmtDir+"/register", []byte(line), 0); err != nil {
			// Another process may have registered it meanwhile.
			if _, serr := os.Stat(BinfmtDir + "/qemu-arm"); serr != nil {
				return "cannot register qemu-arm with binfmt_misc: " + err.Error()
			}
		}
	}
	if _, err := os.Stat(BinfmtDir + "/qemu-arm"); err != nil {
		return ARMConf + " registered nothing named qemu-arm"
	}
	return ""
}
