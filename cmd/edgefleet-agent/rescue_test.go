package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// A self-update whose new agent cannot even start (it dies before its
// Recover could count a boot on trial) is undone from outside, the way
// docs/systemd/edgefleet-agent-rescue.service does it: the previous agent,
// kept as <path>.prev, runs `rollback edgefleet-agent` without a daemon,
// and the next start is the old agent again.
func TestSelfUpdateCrashAtStartRescuedFromPrev(t *testing.T) {
	d := newDevice(t, deviceOpts{self: true, maxBoots: 2})
	copyFile(t, agentBin(t, "2.0.0", ""), mkdirFor(t, d.self))
	copyFile(t, helloBin(t, "1.0.0", ""), mkdirFor(t, d.hello))
	dm := d.startDaemon(d.self)
	d.waitStatus("agent 2.0.0 runs hello", func(st agent.DaemonStatus) bool {
		return st.AgentVersion == "2.0.0" && runningVersion(st, "hello", "1.0.0")
	})

	// "Agent 3.0.0" passes its probe (--version prints 3.0.0) but is not an
	// agent at all: `run` exits at once. hello stands in for it.
	broken := helloBin(t, "3.0.0", "")
	d.mustRun(0, "sideload", "--no-wait", "--config", d.cfgPath, d.bundle("edgefleet-agent", "3.0.0", 3, broken))
	select {
	case <-dm.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the daemon did not re-exec into the new agent")
	}
	if v := versionAt(t, d.self); v != "3.0.0" {
		t.Fatalf("%s is %s, want the new 3.0.0 in place", d.self, v)
	}
	if err := exec.Command(d.self, "run", "--config", d.cfgPath).Run(); err == nil {
		t.Fatal("the broken agent started; the test needs one that cannot")
	}

	// The rescue unit: the previous agent rolls the app back directly.
	out, err := exec.Command(d.self+".prev", "rollback", "--if-on-trial", "--config", d.cfgPath, "edgefleet-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("rescue rollback from %s.prev: %v\n%s", d.self, err, out)
	}
	if v := versionAt(t, d.self); v != "2.0.0" {
		t.Fatalf("after the rescue %s is %s, want 2.0.0", d.self, v)
	}
	// Rescue again (the unit may run after any failure): nothing on trial,
	// nothing changes.
	out, err = exec.Command(d.self, "rollback", "--if-on-trial", "--config", d.cfgPath, "edgefleet-agent").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "not on trial: nothing to rescue") {
		t.Fatalf("second rescue: %v\n%s", err, out)
	}
	if v := versionAt(t, d.self); v != "2.0.0" {
		t.Fatalf("the second rescue changed %s to %s", d.self, v)
	}
	d.startDaemon(d.self)
	st := d.waitStatus("agent 2.0.0 back, hello running", func(st agent.DaemonStatus) bool {
		return st.AgentVersion == "2.0.0" && runningVersion(st, "hello", "1.0.0")
	})
	// 2.0.0 was put in place by hand, so its record says "unknown"; the
	// binary and the running agent say 2.0.0 (checked above).
	a := app(st, "edgefleet-agent")
	if a.State != agent.StateRolledBack {
		t.Fatalf("after the rescue: %+v", a.AppStatus)
	}
	if !strings.Contains(a.LastError, "did not start") || !strings.Contains(strings.Join(eventKinds(a.History), " "), "rolled-back") {
		t.Fatalf("the rescue is not on record: %+v", a.AppStatus)
	}
	// With the daemon up, the rescue never touches anything.
	out, err = exec.Command(d.self, "rollback", "--if-on-trial", "--config", d.cfgPath, "edgefleet-agent").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nothing to rescue") {
		t.Fatalf("rescue with a running daemon: %v\n%s", err, out)
	}
}

func eventKinds(h []agent.Event) []string {
	var k []string
	for _, e := range h {
		k = append(k, e.Kind)
	}
	return k
}

// mkdirFor creates the directory of path and returns path.
func mkdirFor(t *testing.T, path string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}
