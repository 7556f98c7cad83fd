package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/edgefleet/edgefleet/hardware"
)

// mountTmpfs mounts a real tmpfs of size bytes for the test (root only).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: mounting a small tmpfs needs root (scripts/test.sh runs the suite as root in CI)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("SKIP: cannot mount tmpfs on %s (%v); needs root with CAP_SYS_ADMIN", dir, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func helloSize(t *testing.T, version string) int64 {
	fi, err := os.Stat(buildHello(t, native, version, ""))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestNotEnoughStorage(t *testing.T) {
	size := helloSize(t, "1.0.0")
	// Room for one binary and a bit, not for a second plus the reserve.
	fs := mountTmpfs(t, size*3/2+(64<<10))
	k := newKitIn(t, fs)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	a.Commit("hello")
	before := k.snap(a)
	st, _ := hardware.ReadStorage(fs)

	err := k.tryInstall(a, k.bundle(spec{Version: "1.1.0", Sequence: 2, MinFree: 4 << 20}))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("install on a full tmpfs: %v, want ErrNoSpace", err)
	}
	for _, s := range []string{"needs", "binary " + hardware.Size(helloSize(t, "1.1.0")).String(), "reserve 4MiB", hardware.Size(st.Free).String() + " free on"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if Fatal(err) {
		t.Errorf("no space is transient (free space may come back), got fatal")
	}
	if after := k.snap(a); after != before {
		t.Fatalf("refusal changed things: %+v → %+v", before, after)
	}
	assertNoLeftovers(t, k)
	t.Logf("refused: %v", err)
}

func TestDiskFullWhileStaging(t *testing.T) {
	size := helloSize(t, "1.0.0")
	fs := mountTmpfs(t, size*3/2+(64<<10))
	k := newKitIn(t, fs)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	a.Commit("hello")
	a.Close()
	// A storage report that lies, so the check passes and the disk fills
	// for real while staging.
	a = k.open(Options{Storage: func(p string) (hardware.StorageFacts, error) {
		s, err := hardware.ReadStorage(p)
		s.Free += 64 << 20
		return s, err
	}})
	before := k.snap(a)
	free0, _ := hardware.ReadStorage(fs)
	var progressed int64
	_, err := a.Install(context.Background(), bytes.NewReader(k.bundleBytes(spec{Version: "1.1.0", Sequence: 2})), func(p Progress) {
		if p.Step == StepStage {
			progressed = p.Done
		}
	})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "disk full while staging") {
		t.Fatalf("install onto a filling disk: %v", err)
	}
	if progressed == 0 {
		t.Errorf("staging never started; the test did not fill the disk mid-way")
	}
	if after := k.snap(a); after != before {
		t.Fatalf("refusal changed things: %+v → %+v", before, after)
	}
	assertNoLeftovers(t, k)
	free1, _ := hardware.ReadStorage(fs)
	if free1.Free != free0.Free {
		t.Errorf("free space %d after the failed stage, %d before: the partial file was not removed", free1.Free, free0.Free)
	}
	st := appStatus(t, a, "hello")
	if !strings.Contains(st.LastError, "disk full") {
		t.Errorf("status does not report the disk-full refusal: %q", st.LastError)
	}
	t.Logf("refused: %v", err)
}
