package agent

// Issue 7 item 9: root followed a symbolic link planted at the staging
// path. These tests plant real links (and hard links, named pipes) and use
// a real other user (uid 65534, nobody) where ownership is the point.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// nobody is the other user of these tests.
const nobody = 65534

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: this test changes file owners and runs a command as another user (uid 65534), which needs root; scripts/test.sh runs the suite as root")
	}
}

// asNobody runs name args as uid/gid 65534 and fails the test on error.
func asNobody(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d: %s %s: %v\n%s", nobody, name, strings.Join(args, " "), err, out)
	}
}

// openUpTo makes every directory from dir up to (not including) / that
// t.TempDir made private traversable, so another user can reach dir.
func openUpTo(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o011 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// victim is a root-only file outside the app's directory (think
// /etc/shadow) whose content must never change.
func victim(t *testing.T) (path string, content []byte) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "shadow")
	content = []byte("root:$6$secret:19000:0:99999:7:::\n")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, content
}

func assertIntact(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the victim file %s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the agent wrote through a link into %s: it now holds %d bytes starting %q", path, len(got), got[:min(len(got), 16)])
	}
}

func assertUnchanged(t *testing.T, k *kit, a *Agent, before snapshot) {
	t.Helper()
	if after := k.snap(a); after != before {
		t.Fatalf("a refusal changed the device:\nbefore %+v\nafter  %+v", before, after)
	}
}

func wantMsg(t *testing.T, err error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("the error does not say %q:\n%v", p, err)
		}
	}
}

// A link at .<name>.staged, in a directory only root can change (so root
// put it there, or a bug did): the agent never writes through it. A hard
// link to another file there is removed, not truncated.
func TestStagingNeverFollowsALink(t *testing.T) {
	t.Run("symlink", func(t *testing.T) {
		k := newKit(t)
		a := k.open(Options{})
		k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
		vic, content := victim(t)
		staged := k.cfg.Apps[0].stagedPath()
		if err := os.Symlink(vic, staged); err != nil {
			t.Fatal(err)
		}
		before := k.snap(a)
		err := k.tryInstall(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
		assertIntact(t, vic, content)
		if !errors.Is(err, ErrUnsafeDir) {
			t.Fatalf("install over a planted link: %v, want ErrUnsafeDir", err)
		}
		wantMsg(t, err, staged, "a symbolic link", "does not write through it", "remove it")
		st := appStatus(t, a, "hello")
		if st.State != StateCommitted || st.Version != "1.0.0" {
			t.Fatalf("after the refusal: %s", dumpJSON(st))
		}
		before.state, before.version = st.State, st.Version
		assertUnchanged(t, k, a, before)
		if fi, err := os.Lstat(staged); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("the planted link is not left for the operator to see: %v", err)
		}
		// Once the operator removed it, the release installs.
		os.Remove(staged)
		k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
		assertIntact(t, vic, content)
	})
	t.Run("hard link", func(t *testing.T) {
		k := newKit(t)
		a := k.open(Options{})
		k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
		a.Commit("hello")
		// Same filesystem (both under the test's temp dir) so link works.
		vic := filepath.Join(filepath.Dir(filepath.Dir(k.appPath)), "shadow")
		content := []byte("root:$6$secret\n")
		if err := os.WriteFile(vic, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(vic, k.cfg.Apps[0].stagedPath()); err != nil {
			t.Fatal(err)
		}
		k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
		assertIntact(t, vic, content)
		if v := runVersion(t, k.appPath); v != "1.1.0" {
			t.Fatalf("hello runs %s", v)
		}
	})
}

// The attack, for real: the app's directory belongs to another
// user, who plants a link at the staging name pointing at a root-only
// file. The agent refuses to install there at all, says what to run, and
// changes nothing (before the fix, root overwrote the file with the new
// binary).
func TestUnsafeAppDirRefused(t *testing.T) {
	requireRoot(t)
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	a.Commit("hello")
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	app := &k.cfg.Apps[0]
	bin := filepath.Dir(app.Path)
	vic, content := victim(t)
	openUpTo(t, bin)
	if err := os.Chown(bin, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	asNobody(t, "ln", "-s", vic, app.stagedPath())
	before := k.snap(a)
	next := k.bundle(spec{Version: "1.2.0", Sequence: 3})

	err := k.tryInstall(a, next)
	assertIntact(t, vic, content)
	if !errors.Is(err, ErrUnsafeDir) || Fatal(err) {
		t.Fatalf("install into a directory owned by uid %d: %v (fatal %v), want a non-fatal ErrUnsafeDir", nobody, err, Fatal(err))
	}
	wantMsg(t, err, "the directory "+bin+" of app hello", "owned by nobody (uid 65534)",
		"chown root:root "+bin+" && chmod go-w "+bin, "changes nothing")
	t.Logf("refusal: %v", err)
	st := appStatus(t, a, "hello")
	before.state = st.State
	assertUnchanged(t, k, a, before)
	if st.State != StateCommitted || st.Version != "1.1.0" {
		t.Fatalf("after the refusal: %s", dumpJSON(st))
	}
	f, err := os.Open(next)
	if err != nil {
		t.Fatal(err)
	}
	_, cerr := a.Check(context.Background(), f)
	f.Close()
	if !errors.Is(cerr, ErrUnsafeDir) {
		t.Fatalf("check into that directory: %v, want ErrUnsafeDir", cerr)
	}
	if err := a.Rollback("hello", "by hand"); !errors.Is(err, ErrUnsafeDir) {
		t.Fatalf("rollback in that directory: %v, want ErrUnsafeDir", err)
	}
	assertIntact(t, vic, content)
	assertUnchanged(t, k, a, before)

	// The operator runs what the error said; the link (which the refusal
	// left for them to see) goes too; the release installs.
	if err := os.Chown(bin, 0, 0); err != nil {
		t.Fatal(err)
	}
	os.Remove(app.stagedPath())
	k.install(a, next)
	assertIntact(t, vic, content)
}

// Every other way another user can change the app's directory: group or
// world write, a parent they own, a link of theirs in a sticky directory.
// A world-writable sticky parent (like /tmp) is fine.
func TestUnsafeAppDirCases(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, k *kit) string // returns the app path to configure
		want  []string
	}{
		{"group writable", func(t *testing.T, k *kit) string {
			os.MkdirAll(filepath.Dir(k.appPath), 0o755)
			os.Chmod(filepath.Dir(k.appPath), 0o775)
			return k.appPath
		}, []string{"can be written by its group or by everyone (mode 0775)", "chmod go-w " + "BIN"}},
		{"world writable with the sticky bit", func(t *testing.T, k *kit) string {
			os.MkdirAll(filepath.Dir(k.appPath), 0o755)
			os.Chmod(filepath.Dir(k.appPath), 0o777|os.ModeSticky)
			return k.appPath
		}, []string{"can be written by its group or by everyone (mode 1777)", "chmod go-w BIN"}},
		{"parent owned by another user", func(t *testing.T, k *kit) string {
			os.MkdirAll(filepath.Dir(k.appPath), 0o755)
			os.Chown(filepath.Dir(filepath.Dir(k.appPath)), nobody, nobody)
			return k.appPath
		}, []string{"PARENT, a parent of BIN, is owned by nobody (uid 65534)", "chown root:root PARENT && chmod go-w PARENT", "such as /opt/hello/bin/hello"}},
		{"parent missing under a directory of another user", func(t *testing.T, k *kit) string {
			os.MkdirAll(filepath.Dir(filepath.Dir(k.appPath)), 0o755)
			os.Chown(filepath.Dir(filepath.Dir(k.appPath)), nobody, nobody)
			return k.appPath
		}, []string{"PARENT, a parent of BIN, is owned by nobody"}},
		{"link of another user in a sticky directory", func(t *testing.T, k *kit) string {
			sticky := filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(k.appPath))), "shared")
			os.MkdirAll(sticky, 0o755)
			os.Chmod(sticky, 0o777|os.ModeSticky)
			real := filepath.Dir(k.appPath)
			os.MkdirAll(real, 0o755)
			openUpTo(t, sticky)
			asNobody(t, "ln", "-s", real, filepath.Join(sticky, "bin"))
			return filepath.Join(sticky, "bin", "hello")
		}, []string{"/shared/bin is a symbolic link owned by nobody (uid 65534) in a directory everyone can write to"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t)
			path := tc.setup(t, k)
			k.cfg.Apps[0].Path = path
			_, statErr := os.Lstat(filepath.Dir(k.appPath))
			binExisted := statErr == nil
			a := k.open(Options{})
			err := k.tryInstall(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
			if !errors.Is(err, ErrUnsafeDir) {
				t.Fatalf("install: %v, want ErrUnsafeDir", err)
			}
			bin := filepath.Dir(k.appPath)
			r := strings.NewReplacer("PARENT", filepath.Dir(bin), "BIN", bin)
			for _, w := range tc.want {
				wantMsg(t, err, r.Replace(w))
			}
			t.Logf("refusal: %v", err)
			if _, err := os.Lstat(path); err == nil {
				t.Fatal("the refused install created the binary")
			}
			if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".hello.*")); len(m) > 0 {
				t.Fatalf("the refused install left %v", m)
			}
			if _, err := os.Lstat(filepath.Dir(k.appPath)); !binExisted && err == nil {
				t.Fatalf("the refused install created %s under a directory another user controls", filepath.Dir(k.appPath))
			}
		})
	}

	// Fine: a sticky world-writable parent (like /tmp, where all these
	// tests live) and a root-owned link to the real directory.
	k := newKit(t)
	parent := filepath.Dir(filepath.Dir(k.appPath))
	os.MkdirAll(parent, 0o755)
	os.Chmod(parent, 0o777|os.ModeSticky)
	link := filepath.Join(filepath.Dir(parent), "current")
	if err := os.Symlink(filepath.Base(parent), link); err != nil {
		t.Fatal(err)
	}
	k.cfg.Apps[0].Path = filepath.Join(link, "bin", "hello")
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	if v := runVersion(t, k.appPath); v != "1.0.0" {
		t.Fatalf("hello runs %s", v)
	}
	if fi, err := os.Stat(filepath.Dir(k.appPath)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("the directory the agent made: %v %v, want mode 0755", fi.Mode(), err)
	}
}

// A data_dir that another user created in advance (or may write to) is
// refused at Open, before anything is created in it: that user could
// move state.db and floor.json aside and replay an older release.
func TestUnsafeDataDirRefused(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		want  string
	}{
		{"created by another user", func(dir string) { os.Chown(dir, nobody, nobody) }, "is owned by nobody (uid 65534)"},
		{"world writable", func(dir string) { os.Chmod(dir, 0o777) }, "can be written by its group or by everyone"},
		{"group writable", func(dir string) { os.Chmod(dir, 0o770) }, "can be written by its group or by everyone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t)
			data := k.cfg.DataDir
			if err := os.Mkdir(data, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(data)
			_, err := Open(k.cfg, Options{})
			if !errors.Is(err, ErrUnsafeDir) {
				t.Fatalf("Open with an unsafe data_dir: %v, want ErrUnsafeDir", err)
			}
			wantMsg(t, err, "data_dir "+data, tc.want, "chmod go-w "+data, "bring back old state")
			t.Logf("refusal: %v", err)
			if ents, _ := os.ReadDir(data); len(ents) != 0 {
				t.Fatalf("Open created %v in the unsafe data_dir", ents)
			}
			if _, err := ResetState(k.cfg, time.Now()); !errors.Is(err, ErrUnsafeDir) {
				t.Fatalf("reset in the unsafe data_dir: %v, want ErrUnsafeDir", err)
			}
		})
	}
	// A data_dir that does not exist yet is created, mode 0700.
	k := newKit(t)
	k.open(Options{})
	if fi, err := os.Stat(k.cfg.DataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data_dir made by Open: %v %v, want 0700", fi.Mode(), err)
	}
}

// The download's .part file in data_dir/dl: a link there is never written
// through; a leftover regular file is resumed; a hard link or a named pipe
// is refused without hanging.
func TestPartFileNeverFollowsALink(t *testing.T) {
	dl := filepath.Join(t.TempDir(), "dl")
	if err := os.Mkdir(dl, 0o700); err != nil {
		t.Fatal(err)
	}
	vic, content := victim(t)
	link := filepath.Join(dl, "hello-aa.part")
	os.Symlink(vic, link)
	if _, err := openPartFile(link); !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("open a planted link: %v", err)
	}
	assertIntact(t, vic, content)

	hard := filepath.Join(dl, "hello-bb.part")
	same := filepath.Join(dl, "other")
	os.WriteFile(same, []byte("keep"), 0o600)
	os.Link(same, hard)
	if _, err := openPartFile(hard); !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), "hard links") {
		t.Fatalf("open a hard link: %v", err)
	}

	fifo := filepath.Join(dl, "hello-cc.part")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openPartFile(fifo); !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("open a named pipe: %v", err)
	}

	resume := filepath.Join(dl, "hello-dd.part")
	os.WriteFile(resume, []byte("chunk0"), 0o600)
	f, err := openPartFile(resume)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	f.Read(b)
	f.Close()
	if string(b) != "chunk0" {
		t.Fatalf("a resumed download lost its bytes: %q", b)
	}
	fresh := filepath.Join(dl, "hello-ee.part")
	f, err = openPartFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, _ := os.Lstat(fresh); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new .part file mode: %v", fi)
	}

	// The dl directory itself may not be another user's or a link.
	if os.Geteuid() == 0 {
		os.Chown(dl, nobody, nobody)
		if _, err := openPartFile(fresh); !errors.Is(err, ErrUnsafeDir) {
			t.Fatalf("open in a dl directory owned by uid %d: %v", nobody, err)
		}
	}
}

// The same over MQTT with a real broker and a real download: a link
// planted at the .part name the agent will use is not written through;
// the device reports why it cannot download.
func TestMQTTPartFileLinkNotFollowed(t *testing.T) {
	shortRetries(t)
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Encoding: protocol.EncodingNone})
	m, _ := bundleChunks(t, k, v1)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")

	cfg := mqttConfig(t, k, "dev-link", b.URL())
	dl := filepath.Join(cfg.DataDir, "dl")
	if err := os.MkdirAll(dl, 0o700); err != nil {
		t.Fatal(err)
	}
	vic, content := victim(t)
	part := filepath.Join(dl, fmt.Sprintf("hello-%s.part", m.Payload.SHA256))
	if err := os.Symlink(vic, part); err != nil {
		t.Fatal(err)
	}
	dev := startMQTTDevice(t, cfg)
	defer dev.stop()
	eventually(t, "the device reports the link or installs", func() bool {
		return strings.Contains(deviceError(view, "dev-link"), "symbolic link") || installedIs(dev, "1.0.0", StateTrial) || installedIs(dev, "1.0.0", StateCommitted)
	})
	assertIntact(t, vic, content)
	if e := deviceError(view, "dev-link"); !strings.Contains(e, part) || !strings.Contains(e, "remove it") {
		t.Fatalf("device error: %q", e)
	}
}
