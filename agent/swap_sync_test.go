package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSwapSyncOrder traces the real file system calls of a sideload
// (strace) and checks the order DESIGN.md decision 6 relies on: the staged
// file is fsynced before it is renamed; the hard link that keeps the old
// binary as .prev is made durable (directory fsync) before the rename
// replaces the target — otherwise, after a power cut, the journal may hold
// the rename but not the link, and the old binary (the one rollback needs)
// is gone; and the directory is fsynced after the rename.
func TestSwapSyncOrder(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skipf("SKIPPED: strace is not installed (scripts/test.sh installs it: apt-get install strace); the fsync order of the swap was not checked")
	}
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	a.Close()
	next := k.bundle(spec{Version: "1.1.0", Sequence: 2})
	bin := buildTestAgent(t, native)
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-y", "-qq", "-o", trace,
		"-e", "trace=fsync,fdatasync,link,linkat,rename,renameat,renameat2,unlink,unlinkat",
		bin, "-config", k.cfgPath, "install", next)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install under strace: %v\n%s", err, out)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(k.appPath)
	staged := (&AppConfig{Path: k.appPath}).stagedPath()
	var ops []string // "sync-staged", "sync-dir", "link-prev", "rename"
	fdPath := regexp.MustCompile(`^\d+\s+(?:f?data)?f?sync\(\d+<([^>]*)>\)\s+=\s+0`)
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case fdPath.MatchString(line):
			switch p := fdPath.FindStringSubmatch(line)[1]; p {
			case staged:
				ops = append(ops, "sync-staged")
			case dir:
				ops = append(ops, "sync-dir")
			}
		case strings.Contains(line, "link") && strings.Contains(line, `"`+k.appPath+`.prev"`) && !strings.Contains(line, "unlink") && strings.HasSuffix(line, "= 0"):
			ops = append(ops, "link-prev")
		case strings.Contains(line, "rename") && strings.Contains(line, `"`+staged+`"`) && strings.HasSuffix(line, "= 0"):
			ops = append(ops, "rename")
		}
	}
	t.Logf("swap syscalls: %v", ops)
	idx := func(op string, from int) int {
		for i := from; i < len(ops); i++ {
			if ops[i] == op {
				return i
			}
		}
		return -1
	}
	link, rename := idx("link-prev", 0), idx("rename", 0)
	if link < 0 || rename < 0 {
		t.Fatalf("the trace shows no link to .prev or no rename of the staged file; trace:\n%s", b)
	}
	if s := idx("sync-staged", 0); s < 0 || s > rename {
		t.Errorf("the staged file is not fsynced before the rename: %v", ops)
	}
	if s := idx("sync-dir", link); s < 0 || s > rename {
		t.Errorf("the directory is not fsynced between the link to .prev and the rename over the target (a power cut could keep the rename and lose .prev): %v", ops)
	}
	if idx("sync-dir", rename) < 0 {
		t.Errorf("the directory is not fsynced after the rename: %v", ops)
	}
}
