package hardware

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// smallTmpfs mounts an 8 MiB tmpfs for the test, or skips loudly.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: mounting a small tmpfs needs root; run the tests as root (scripts/test.sh does in CI)")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("SKIP: cannot mount a tmpfs at %s (%v); this sandbox forbids mount(2)", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestReadStorageTmpfs(t *testing.T) {
	dir := smallTmpfs(t)
	before, err := ReadStorage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if before.Total != 8<<20 || before.Free != 8<<20 || before.Path != dir {
		t.Fatalf("fresh 8 MiB tmpfs: %+v", before)
	}
	const n = 3 << 20
	if err := os.WriteFile(filepath.Join(dir, "fill"), bytes.Repeat([]byte{0xa5}, n), 0o600); err != nil {
		t.Fatal(err)
	}
	after, err := ReadStorage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := before.Free - after.Free; got != n || after.Total != before.Total {
		t.Errorf("after writing %d bytes free dropped by %d (before %+v, after %+v)", n, got, before, after)
	}
	// A path that does not exist yet is measured on the filesystem it would
	// land on, and reported under the name asked for.
	later := filepath.Join(dir, "opt", "hello", "bin")
	s, err := ReadStorage(later)
	if err != nil || s.Path != later || s.Free != after.Free || s.Total != after.Total {
		t.Errorf("not-yet-existing path: %+v %v", s, err)
	}
	// Filling the filesystem leaves no free space, as the agent will see it.
	f, err := os.Create(filepath.Join(dir, "rest"))
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.Write(make([]byte, 8<<20))
	f.Close()
	if werr == nil {
		t.Fatal("wrote 8 MiB into the 5 MiB left on an 8 MiB tmpfs")
	}
	if full, err := ReadStorage(dir); err != nil || full.Free != 0 {
		t.Errorf("full tmpfs: %+v %v", full, err)
	}
}

func TestReadStorageErrors(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// statfs through a regular file as a directory: ENOTDIR, not a walk up.
	if _, err := ReadStorage(filepath.Join(f, "sub")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("path under a file: %v", err)
	}
}

func TestMulClamp(t *testing.T) {
	for _, tc := range []struct {
		a    uint64
		b    int64
		want int64
	}{
		{10, 4096, 40960}, {0, 4096, 0}, {10, 0, 0}, {10, -1, 0},
		{math.MaxUint64, 4096, math.MaxInt64}, {1 << 52, 4096, math.MaxInt64}, {1 << 50, 4096, 1 << 62},
	} {
		if got := mulClamp(tc.a, tc.b); got != tc.want {
			t.Errorf("mulClamp(%d, %d) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestReadMemory(t *testing.T) {
	m, err := ReadMemory()
	if err != nil {
		t.Fatal(err)
	}
	if m.Total <= 0 || m.Available <= 0 || m.Available > m.Total {
		t.Fatalf("%+v", m)
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	if sys := int64(si.Totalram) * int64(si.Unit); m.Total/1024 != sys/1024 {
		t.Errorf("MemTotal %d, sysinfo says %d", m.Total, sys)
	}
}

func TestParseMeminfo(t *testing.T) {
	m, ok := parseMeminfo([]byte("MemTotal:         421888 kB\nMemFree:  1 kB\nMemAvailable:     204800 kB\nbogus\nHugePages_Total: 0\n"))
	if !ok || m.Total != 421888<<10 || m.Available != 200<<20 {
		t.Errorf("%+v %v", m, ok)
	}
	if _, ok := parseMeminfo([]byte("MemTotal: 5 kB\n")); ok {
		t.Error("accepted meminfo without MemAvailable (pre-3.14 kernel): sysinfo should be used")
	}
	if _, ok := parseMeminfo([]byte("MemTotal: x kB\nMemAvailable: -1 kB\n")); ok {
		t.Error("accepted garbage")
	}
}

func TestReadFactsNative(t *testing.T) {
	dir := t.TempDir()
	f, err := ReadFacts(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("uname", "-r", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Kernel + " " + f.Machine; got != strings.TrimSpace(string(out)) {
		t.Errorf("kernel/machine %q, uname says %q", got, out)
	}
	if len(f.Storage) != 1 || f.Storage[0].Path != dir || f.Memory.Total <= 0 {
		t.Errorf("%+v", f)
	}
	s := f.Summary()
	if !strings.HasPrefix(s, f.CPU.Label()) || !strings.Contains(s, "free on "+dir) || !strings.HasSuffix(s, "RAM") {
		t.Errorf("summary %q", s)
	}
	if _, err := ReadFacts(filepath.Join(dir, "x\x00y")); err == nil {
		t.Error("a path with NUL was measured")
	}
}
