package main

import (
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// Issue 7 item 11: `reset` with the daemon running moved a healthy state
// database aside; status then showed "none sequence 0" while the app ran.
// With a real daemon: reset is refused (healthy, held), nothing moves,
// status still tells the truth; with the daemon stopped, reset still
// refuses a healthy database and only --force moves it (keeping the
// floor).
func TestResetRefusesHealthyAndHeldState(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "1.0.0", 1, helloBin(t, "1.0.0", "")))
	dm := d.startDaemon(d.cli)
	d.waitStatus("hello 1.0.0 committed and running", func(st agent.DaemonStatus) bool {
		return runningVersion(st, "hello", "1.0.0") && app(st, "hello").State == agent.StateCommitted
	})
	moved := func() []string {
		m, _ := filepath.Glob(filepath.Join(d.data, "state.db.corrupt-*"))
		return m
	}
	truthful := func(when string) {
		t.Helper()
		st, ok := d.status()
		if !ok {
			t.Fatalf("%s: the daemon does not answer", when)
		}
		a := app(st, "hello")
		if a.Version != "1.0.0" || a.Sequence != 1 || a.State != agent.StateCommitted || st.StateError != "" {
			t.Fatalf("%s: status says %s %s sequence %d (state error %q) while hello 1.0.0 runs", when, a.State, a.Version, a.Sequence, st.StateError)
		}
	}

	so, se, code := d.run("reset", "--config", d.cfgPath)
	if code != 1 {
		t.Fatalf("reset with the daemon running: exit %d, want 1 (refused)\nstdout:\n%s\nstderr:\n%s", code, so, se)
	}
	for _, want := range []string{"refused:", "healthy", "nothing needs resetting", "stop the daemon", "reset --force"} {
		if !strings.Contains(so+se, want) {
			t.Errorf("reset refusal does not say %q:\n%s%s", want, so, se)
		}
	}
	if m := moved(); len(m) != 0 {
		t.Fatalf("a refused reset moved the database: %v", m)
	}
	truthful("after reset")

	so, _, code = d.run("reset", "--force", "--config", d.cfgPath)
	if code != 1 || !strings.Contains(so, "stop the daemon") {
		t.Fatalf("reset --force with the daemon running: exit %d\n%s", code, so)
	}
	if m := moved(); len(m) != 0 {
		t.Fatalf("reset --force with the daemon running moved the database: %v", m)
	}
	truthful("after reset --force")

	// Without the control socket (a hung daemon, another tool): the
	// daemon's lock on the database refuses it too.
	cfg, err := agent.LoadConfig(d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, reset := range []func(*agent.Config, time.Time) (string, error){agent.ResetState, agent.ForceResetState} {
		if _, err := reset(cfg, time.Now()); !errors.Is(err, agent.ErrLocked) || !strings.Contains(err.Error(), "stop `edgefleet-agent run`") {
			t.Fatalf("reset of the database the daemon holds: %v, want ErrLocked", err)
		}
	}
	if m := moved(); len(m) != 0 {
		t.Fatalf("moved while held: %v", m)
	}
	truthful("after the direct resets")

	dm.cmd.Process.Signal(syscall.SIGTERM)
	<-dm.done

	so, _, code = d.run("reset", "--config", d.cfgPath)
	if code != 1 || !strings.Contains(so, "reads fine") || !strings.Contains(so, "--force") {
		t.Fatalf("reset of a healthy database, daemon stopped: exit %d\n%s", code, so)
	}
	if m := moved(); len(m) != 0 {
		t.Fatalf("moved a healthy database without --force: %v", m)
	}
	so = d.mustRun(0, "reset", "--force", "--config", d.cfgPath)
	if m := moved(); len(m) != 1 || !strings.Contains(so, m[0]) || !strings.Contains(so, "floor") {
		t.Fatalf("reset --force, daemon stopped: moved %v\n%s", m, so)
	}
	// The floor outlived it: the same release is still refused, saying why.
	so = d.mustRun(1, "sideload", "--config", d.cfgPath, filepath.Join(d.dir, "hello-1.0.0.efb"))
	if !strings.Contains(so, "anti-rollback floor") {
		t.Fatalf("sideload of the same release after a forced reset:\n%s", so)
	}
}
