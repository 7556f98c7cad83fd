package agent

// Recovery after a lost write: what a power cut does when an fsync is
// missing or a disk acknowledges writes it has not made. The files are set
// up as the power-cut suite (scripts/powercut.sh) found them on emulated
// machines; recovery runs in a real process (the test agent).

import (
	"os"
	"strings"
	"testing"
)

// installTwo leaves the kit with 1.0.0 at .prev and 1.1.0 at the app path
// (on trial, or committed when commit is set); the agent is closed.
func installTwo(t *testing.T, k *kit, commit bool) {
	t.Helper()
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if commit {
		if err := a.Commit("hello"); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
}

// recoverInProcess runs `testagent recover` as a real process.
func recoverInProcess(t *testing.T, k *kit) string {
	t.Helper()
	ps, out := runTestAgent(t, k, "", "recover")
	t.Logf("recover (exit %d): %s", ps.ExitCode(), strings.TrimSpace(out))
	return out
}

// zeroFile replaces the app path's content in place with zeros of the same
// size, mode 0644: a file whose data blocks never reached the disk comes
// back like that (full size, not executable).
func zeroFile(t *testing.T, p string) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, fi.Size()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The database says committed 1.1.0, but the rename was lost: the app path
// holds 1.1.0's predecessor and the staged file still holds 1.1.0.
// Recovery must put 1.1.0 in place, not delete it as a leftover.
func TestRecoverLostRenameMovesStagedIntoPlace(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: runs the real test agent; not in -short")
	}
	for _, commit := range []bool{true, false} {
		name := map[bool]string{true: "committed", false: "trial"}[commit]
		t.Run(name, func(t *testing.T) {
			k := newKit(t)
			installTwo(t, k, commit)
			// Undo the rename as a lost directory write would.
			if err := os.Rename(k.appPath, k.cfg.Apps[0].stagedPath()); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(k.appPath+".prev", k.appPath); err != nil {
				t.Fatal(err)
			}
			if v := runVersion(t, k.appPath); v != "1.0.0" {
				t.Fatalf("setup: app path runs %s", v)
			}
			out := recoverInProcess(t, k)
			if !strings.Contains(out, "moved into place again") {
				t.Errorf("recover did not say what it did: %s", out)
			}
			a := k.open(Options{})
			st := assertConsistent(t, k, a)
			if st.Version != "1.1.0" || st.State != name || st.Previous != "1.0.0" {
				t.Fatalf("after recovery: %s", dumpJSON(st))
			}
			if !commit {
				if err := a.Commit("hello"); err != nil {
					t.Fatal(err)
				}
			}
			// The next install commits.
			k.install(a, k.bundle(spec{Version: "1.2.0", Sequence: 3}))
			if err := a.Commit("hello"); err != nil {
				t.Fatal(err)
			}
			if v := runVersion(t, k.appPath); v != "1.2.0" {
				t.Fatalf("next install: app path runs %s", v)
			}
		})
	}
}

// An install killed right after the rename, whose new data then never
// reached the disk: the app path holds an unknown (zeroed) file, .prev the
// recorded old binary. Recovery restores .prev instead of marking the app
// failed.
func TestRecoverUnknownTargetMidSwapRestoresPrev(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: runs the real test agent; not in -short")
	}
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	a.Close()
	ps, out := runTestAgent(t, k, "swap-after-rename", "install", k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if !killedBySIGKILL(ps) {
		t.Fatalf("failpoint did not fire: %s", out)
	}
	zeroFile(t, k.appPath)
	out = recoverInProcess(t, k)
	if !strings.Contains(out, "restored from") {
		t.Errorf("recover did not say what it did: %s", out)
	}
	a = k.open(Options{})
	st := assertConsistent(t, k, a)
	if st.State != StateCommitted || st.Version != "1.0.0" {
		t.Fatalf("after recovery: %s", dumpJSON(st))
	}
	k.install(a, k.bundle(spec{Version: "1.2.0", Sequence: 3}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
}

// A release on trial whose data was lost: .prev holds the recorded
// previous release, so the device goes back to it (recorded as a rollback)
// and the next release installs.
func TestRecoverUnknownTargetOnTrialRestoresPrevious(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: runs the real test agent; not in -short")
	}
	k := newKit(t)
	installTwo(t, k, false)
	// Break the link to .prev first: the lost data is the new file's only.
	if err := os.Remove(k.appPath); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.appPath, []byte("\x7fELF lost"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := recoverInProcess(t, k)
	if !strings.Contains(out, "rolled-back") {
		t.Errorf("recover did not say what it did: %s", out)
	}
	a := k.open(Options{})
	st := assertConsistent(t, k, a)
	if st.State != StateRolledBack || st.Version != "1.0.0" || !strings.Contains(st.LastError, "power cut") {
		t.Fatalf("after recovery: %s", dumpJSON(st))
	}
	k.install(a, k.bundle(spec{Version: "1.2.0", Sequence: 3}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
}
