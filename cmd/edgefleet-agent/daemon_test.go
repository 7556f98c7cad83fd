package main

// End-to-end tests of the daemon with real processes: the real
// edgefleet-agent binary, the real testdata hello app, real bundles signed
// with TEST-ONLY keys generated per test, real signals.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// goBuild builds pkg (relative to the repo root) once per test binary, for
// the host with GOAMD64=v1.
func goBuild(t testing.TB, pkg, ldflags string) string {
	t.Helper()
	b := testkit.Build{Pkg: pkg, Env: []string{"GOAMD64=v1"}, LDFlags: ldflags}
	if pkg == "cmd/edgefleet-agent" && os.Getenv("EDGEFLEET_AGENT_RACE") != "" {
		// Debugging aid: a race-detecting daemon (self-update bundles then
		// fail the static-binary check).
		b.Env, b.Flags = append(b.Env, "CGO_ENABLED=1"), []string{"-race"}
	}
	return testkit.GoBuild(t, b)
}

func agentBin(t testing.TB, version, extra string) string {
	return goBuild(t, "cmd/edgefleet-agent", strings.TrimSpace("-s -w -X main.version="+version+" "+extra))
}

func helloBin(t testing.TB, version, extra string) string {
	return testkit.BuildHello(t, []string{"GOAMD64=v1"}, version, extra)
}

// device is one simulated device in a temp dir.
type device struct {
	t       testing.TB
	dir     string
	priv    protocol.PrivateKey
	pubPath string
	cfgPath string
	data    string
	hello   string // hello's path
	self    string // the agent's own path (self-update tests)
	cli     string // the agent binary used for CLI commands
}

type deviceOpts struct {
	window      string
	health      bool // health command: hello --health
	maxRestarts int
	self        bool // configure app edgefleet-agent
	maxBoots    int
}

func newDevice(t testing.TB, o deviceOpts) *device {
	t.Helper()
	dir := t.TempDir()
	pubPath, priv := testkit.Keys(t, dir)
	d := &device{t: t, dir: dir, priv: priv,
		pubPath: pubPath,
		cfgPath: filepath.Join(dir, "agent.yaml"),
		data:    filepath.Join(dir, "data"),
		hello:   filepath.Join(dir, "opt", "hello", "bin", "hello"),
		self:    filepath.Join(dir, "opt", "edgefleet", "bin", "edgefleet-agent"),
		cli:     agentBin(t, "1.0.0", ""),
	}
	d.writeConfig(o)
	return d
}

func (d *device) writeConfig(o deviceOpts) {
	d.t.Helper()
	if o.window == "" {
		o.window = "1s"
	}
	if o.maxRestarts == 0 {
		o.maxRestarts = 2
	}
	if o.maxBoots == 0 {
		o.maxBoots = 2
	}
	hello := testkit.AgentApp{Name: "hello", Path: d.hello, Args: []string{"--serve"}, Window: o.window,
		MaxRestarts: o.maxRestarts, MaxBootsOnTrial: o.maxBoots}
	if o.health {
		hello.HealthCommand, hello.HealthTimeout = []string{d.hello, "--health"}, "10s"
	}
	c := testkit.AgentConfig{DataDir: d.data, TrustedKeys: []string{d.pubPath}, Apps: []testkit.AgentApp{hello}}
	if o.self {
		c.Apps = append(c.Apps, testkit.AgentApp{Name: "edgefleet-agent", Path: d.self, Window: o.window, MaxBootsOnTrial: o.maxBoots})
	}
	testkit.WriteAgentConfig(d.t, d.cfgPath, c)
}

// bundle signs bin as app version/sequence (unencoded, 256 KiB chunks)
// and writes it to dir/app-version.efb.
func (d *device) bundle(app, version string, seq uint64, bin string) string {
	d.t.Helper()
	b := testkit.Bundle(d.t, testkit.Spec{App: app, Version: version, Sequence: seq, Binary: bin,
		Encoding: protocol.EncodingNone, ChunkSize: 256 << 10}, d.priv)
	out := filepath.Join(d.dir, fmt.Sprintf("%s-%s.efb", app, version))
	if err := os.WriteFile(out, b, 0o644); err != nil {
		d.t.Fatal(err)
	}
	return out
}

// run runs the CLI and returns stdout, stderr and the exit code.
func (d *device) run(args ...string) (string, string, int) {
	d.t.Helper()
	cmd := exec.Command(d.cli, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return so.String(), se.String(), code
}

func (d *device) mustRun(want int, args ...string) string {
	d.t.Helper()
	so, se, code := d.run(args...)
	if code != want {
		d.t.Fatalf("edgefleet-agent %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, so, se)
	}
	return so
}

// daemon is a running `edgefleet-agent run`.
type daemon struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

// syncBuffer is safe for concurrent writers and a reading test.
type syncBuffer = testkit.Buffer

// startDaemon starts bin as the daemon and waits until its socket answers.
func (d *device) startDaemon(bin string) *daemon {
	d.t.Helper()
	dm := &daemon{log: &syncBuffer{}, done: make(chan struct{})}
	dm.cmd = exec.Command(bin, "run", "--config", d.cfgPath, "--echo-output")
	dm.cmd.Stdout = dm.log
	dm.cmd.Stderr = dm.log
	if err := dm.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() {
		dm.err = dm.cmd.Wait()
		close(dm.done)
	}()
	d.t.Cleanup(func() {
		select {
		case <-dm.done:
		default:
			dm.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-dm.done:
			case <-time.After(15 * time.Second):
				dm.cmd.Process.Kill()
				<-dm.done
			}
		}
		if d.t.Failed() || os.Getenv("EDGEFLEET_TEST_LOGS") != "" {
			d.t.Logf("daemon log:\n%s", dm.log.String())
		}
	})
	d.waitStatus("the daemon answers", func(st agent.DaemonStatus) bool { return st.Daemon })
	return dm
}

// status asks the daemon; ok is false when it does not answer.
func (d *device) status() (agent.DaemonStatus, bool) { return socketStatus(d.data, 5*time.Second) }

// socketStatus asks the daemon whose data_dir is data over its control
// socket; ok is false when it does not answer within timeout.
func socketStatus(data string, timeout time.Duration) (agent.DaemonStatus, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := agent.DialControl(ctx, filepath.Join(data, "agent.sock"))
	if err != nil {
		return agent.DaemonStatus{}, false
	}
	defer c.Close()
	r, err := c.Do(ctx, agent.Request{Op: agent.OpStatus}, nil)
	if err != nil || r.Status == nil {
		return agent.DaemonStatus{}, false
	}
	return *r.Status, true
}

// waitStatus polls the daemon until cond holds (60s is a hang guard, not
// a timing assertion).
func (d *device) waitStatus(what string, cond func(agent.DaemonStatus) bool) agent.DaemonStatus {
	d.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last agent.DaemonStatus
	for time.Now().Before(deadline) {
		if st, ok := d.status(); ok {
			last = st
			if cond(st) {
				return st
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(last, "", "  ")
	d.t.Fatalf("timed out waiting for %s; last status:\n%s", what, b)
	return last
}

func app(st agent.DaemonStatus, name string) agent.DaemonAppState {
	for _, a := range st.Apps {
		if a.App == name {
			return a
		}
	}
	return agent.DaemonAppState{}
}

func runningVersion(st agent.DaemonStatus, name, version string) bool {
	a := app(st, name)
	if a.Process == nil || !a.Process.Running {
		return false
	}
	for _, l := range a.Output {
		if strings.HasPrefix(l, "hello "+version+" serving") && strings.Contains(l, fmt.Sprintf("(pid %d)", a.Process.PID)) {
			return true
		}
	}
	return false
}

func versionAt(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

func hasEvent(h []agent.Event, kind string) bool {
	for _, e := range h {
		if e.Kind == kind {
			return true
		}
	}
	return false
}

// Sideload without a daemon, then the daemon's start finishes the trial;
// status --json has its documented shape; SIGTERM to the daemon stops the
// app gracefully.
func TestSideloadWithoutDaemonThenStartCommits(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	b1 := d.bundle("hello", "1.0.0", 1, helloBin(t, "1.0.0", ""))

	out := d.mustRun(0, "sideload", "--config", d.cfgPath, b1)
	if !strings.Contains(out, "no daemon running") || !strings.Contains(out, "installed hello 1.0.0 (sequence 1") {
		t.Fatalf("sideload output:\n%s", out)
	}
	for _, step := range []string{"verify", "compat", "storage", "stage", "probe", "swap"} {
		if !strings.Contains(out, step) {
			t.Errorf("sideload output lacks step %s:\n%s", step, out)
		}
	}
	out = d.mustRun(0, "status", "--config", d.cfgPath)
	if !strings.Contains(out, "daemon not running") || !strings.Contains(out, "hello  1.0.0  sequence 1  trial") {
		t.Fatalf("status without daemon:\n%s", out)
	}

	dm := d.startDaemon(d.cli)
	st := d.waitStatus("hello committed", func(st agent.DaemonStatus) bool {
		return app(st, "hello").State == agent.StateCommitted
	})
	a := app(st, "hello")
	if a.Version != "1.0.0" || !hasEvent(a.History, "boot-on-trial") || !hasEvent(a.History, "committed") {
		t.Fatalf("after the trial: %+v", a)
	}
	d.waitStatus("hello 1.0.0 running", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "1.0.0") })

	// status --json shape, from the daemon.
	out = d.mustRun(0, "status", "--config", d.cfgPath, "--json")
	var j map[string]any
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"device_id", "daemon", "agent_version", "pid", "since", "apps"} {
		if _, ok := j[k]; !ok {
			t.Errorf("status --json lacks %q:\n%s", k, out)
		}
	}
	if j["daemon"] != true || j["agent_version"] != "1.0.0" || j["device_id"] != "test-device" {
		t.Errorf("status --json header: %v", j)
	}
	apps, _ := j["apps"].([]any)
	if len(apps) != 1 {
		t.Fatalf("status --json apps: %v", j["apps"])
	}
	ja := apps[0].(map[string]any)
	for _, k := range []string{"app", "path", "version", "sequence", "state", "history", "process", "output"} {
		if _, ok := ja[k]; !ok {
			t.Errorf("status --json app lacks %q: %v", k, ja)
		}
	}
	proc, _ := ja["process"].(map[string]any)
	if proc["running"] != true || proc["pid"] == nil {
		t.Errorf("status --json process: %v", proc)
	}
	out = d.mustRun(0, "status", "--config", d.cfgPath)
	for _, want := range []string{"device test-device, agent 1.0.0", "hello  1.0.0  sequence 1  committed", "process:    running", "| hello 1.0.0 serving"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	// SIGTERM to the daemon: the app gets SIGTERM and exits cleanly, the
	// daemon exits 0 and removes its socket.
	pid := app(st, "hello").Process.PID
	if err := dm.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dm.done:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not exit after SIGTERM")
	}
	if dm.err != nil {
		t.Fatalf("daemon exit: %v\n%s", dm.err, dm.log.String())
	}
	if !strings.Contains(dm.log.String(), "[hello] hello 1.0.0: terminated, exiting") {
		t.Fatalf("the app did not stop gracefully; daemon log:\n%s", dm.log.String())
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("app pid %d still exists after the daemon stopped: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Join(d.data, "agent.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket left behind: %v", err)
	}
}

// With the daemon running: a good release installs through the socket and
// commits; a crash-looping one and one failing its health command are
// rolled back, the previous version keeps running, status says why.
func TestSideloadThroughDaemonTrialOutcomes(t *testing.T) {
	d := newDevice(t, deviceOpts{health: true})
	// First install with the daemon already running and no binary yet.
	d.startDaemon(d.cli)
	out := d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "1.0.0", 1, helloBin(t, "1.0.0", "")))
	if !strings.Contains(out, "installed hello 1.0.0 (sequence 1, previous none); trial: committed") {
		t.Fatalf("first sideload output:\n%s", out)
	}
	d.waitStatus("hello 1.0.0 running", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "1.0.0") })

	// Good release: committed.
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "2.0.0", 2, helloBin(t, "2.0.0", "")))
	for _, want := range []string{"through the running daemon", "trial", "committed", "installed hello 2.0.0 (sequence 2, previous 1.0.0); trial: committed"} {
		if !strings.Contains(out, want) {
			t.Errorf("sideload output lacks %q:\n%s", want, out)
		}
	}
	st := d.waitStatus("hello 2.0.0 running", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "2.0.0") })
	if a := app(st, "hello"); a.State != agent.StateCommitted || a.Version != "2.0.0" || a.Previous != "1.0.0" {
		t.Fatalf("after 2.0.0: %+v", a.AppStatus)
	}

	// Crash loop: rolled back to 2.0.0.
	out = d.mustRun(1, "sideload", "--config", d.cfgPath, d.bundle("hello", "3.0.0", 3, helloBin(t, "3.0.0", "-X main.crash=1")))
	if !strings.Contains(out, "refused: rolled back: hello 3.0.0 crash loop on trial") || !strings.Contains(out, "exit status 3") {
		t.Fatalf("crash-loop sideload output:\n%s", out)
	}
	st = d.waitStatus("hello 2.0.0 running again", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "2.0.0") })
	a := app(st, "hello")
	if a.State != agent.StateRolledBack || a.Version != "2.0.0" {
		t.Fatalf("after the crash loop: %+v", a.AppStatus)
	}
	for _, want := range []string{"crash loop", "exit status 3", "crashing on purpose"} {
		if !strings.Contains(a.LastError, want) {
			t.Errorf("last error lacks %q: %s", want, a.LastError)
		}
	}
	if v := versionAt(t, d.hello); v != "2.0.0" {
		t.Fatalf("%s is %s after the rollback", d.hello, v)
	}
	out = d.mustRun(0, "status", "--config", d.cfgPath)
	if !strings.Contains(out, "rolled-back") || !strings.Contains(out, "last error: hello 3.0.0 crash loop on trial") {
		t.Fatalf("status after the crash loop:\n%s", out)
	}

	// Failing health command: rolled back to 2.0.0.
	out = d.mustRun(1, "sideload", "--config", d.cfgPath, d.bundle("hello", "4.0.0", 4, helloBin(t, "4.0.0", "-X main.healthFail=1")))
	if !strings.Contains(out, "refused: rolled back: hello 4.0.0 failed its health check on trial") || !strings.Contains(out, "unhealthy on purpose") {
		t.Fatalf("health-fail sideload output:\n%s", out)
	}
	st = d.waitStatus("hello 2.0.0 running after the health failure", func(st agent.DaemonStatus) bool {
		return runningVersion(st, "hello", "2.0.0") && app(st, "hello").State == agent.StateRolledBack
	})
	if a := app(st, "hello"); !strings.Contains(a.LastError, "exit status 1") || a.Version != "2.0.0" {
		t.Fatalf("after the health failure: %+v", a.AppStatus)
	}

	// A replayed older release is refused with the reason, nothing changes.
	out = d.mustRun(1, "sideload", "--config", d.cfgPath, filepath.Join(d.dir, "hello-2.0.0.efb"))
	if !strings.Contains(out, "refused:") || !strings.Contains(out, "anti-rollback") {
		t.Fatalf("replayed sideload output:\n%s", out)
	}
	// check through the daemon: a newer good release would install.
	b5 := d.bundle("hello", "5.0.0", 5, helloBin(t, "2.0.0", ""))
	out = d.mustRun(1, "check", "--config", d.cfgPath, b5) // probe expects 5.0.0, binary says 2.0.0
	if !strings.Contains(out, "refused:") || !strings.Contains(out, "probe") {
		t.Fatalf("check of a bad probe:\n%s", out)
	}
	out = d.mustRun(0, "check", "--config", d.cfgPath, d.bundle("hello", "6.0.0", 6, helloBin(t, "6.0.0", "")))
	if !strings.Contains(out, "ok: hello 6.0.0") {
		t.Fatalf("check output:\n%s", out)
	}

	// Manual rollback through the daemon: back to 1.0.0? 2.0.0's previous
	// was dropped by the rollback, so this is refused with the reason.
	out = d.mustRun(1, "rollback", "--config", d.cfgPath, "hello")
	if !strings.Contains(out, "refused:") {
		t.Fatalf("rollback without a previous binary:\n%s", out)
	}
}

// kill -9 of the daemon mid-trial, then a restart: the boot on trial is
// counted and the trial finishes.
func TestDaemonKilledMidTrial(t *testing.T) {
	d := newDevice(t, deviceOpts{window: "1h"})
	d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "1.0.0", 1, helloBin(t, "1.0.0", "")))
	dm := d.startDaemon(d.cli)
	d.waitStatus("hello 1.0.0 running, on trial", func(st agent.DaemonStatus) bool {
		return runningVersion(st, "hello", "1.0.0") && app(st, "hello").State == agent.StateTrial
	})
	// A window of an hour: the trial is certainly running when killed.
	st, _ := d.status()
	oldPID := app(st, "hello").Process.PID
	if err := dm.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-dm.done
	// The orphaned app goes too (parent-death signal), so the next start
	// does not run a second copy.
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(oldPID, 0) == nil && time.Now().Before(deadline) {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", oldPID))
		if strings.Contains(string(stat), ") Z ") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(oldPID, 0) == nil {
		if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", oldPID)); !strings.Contains(string(stat), ") Z ") {
			t.Fatalf("app pid %d survived the daemon's SIGKILL", oldPID)
		}
	}

	d.writeConfig(deviceOpts{window: "1s"})
	d.startDaemon(d.cli)
	st = d.waitStatus("hello committed after the restart", func(st agent.DaemonStatus) bool {
		return app(st, "hello").State == agent.StateCommitted
	})
	a := app(st, "hello")
	boots := 0
	for _, e := range a.History {
		if e.Kind == "boot-on-trial" {
			boots++
		}
	}
	if boots != 2 || a.Version != "1.0.0" {
		t.Fatalf("want 2 boots on trial counted (first start, restart after kill -9), got %d: %+v", boots, a.History)
	}
}

// Self-update: the agent installs a new agent, re-executes itself and
// commits it; a new agent that does not come up on trial is restarted by
// the "init system" (this test) until the boots on trial run out and the
// previous agent is back.
func TestSelfUpdate(t *testing.T) {
	d := newDevice(t, deviceOpts{self: true, maxBoots: 2})
	v1 := agentBin(t, "1.0.0", "")
	v2 := agentBin(t, "2.0.0", "")
	v3bad := agentBin(t, "3.0.0", "-X main.failOnTrial=1")
	placeSelfAndHello(t, d, v1)

	ini := startInit(t, d)
	d.waitStatus("agent 1.0.0 answers", func(st agent.DaemonStatus) bool {
		return st.AgentVersion == "1.0.0" && runningVersion(st, "hello", "1.0.0")
	})

	// Good update: swap, re-exec, trial, commit.
	out := d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("edgefleet-agent", "2.0.0", 2, v2))
	if !strings.Contains(out, "installed edgefleet-agent 2.0.0") || !strings.Contains(out, "trial: pending") {
		t.Fatalf("self sideload output:\n%s", out)
	}
	st := d.waitStatus("agent 2.0.0 committed", func(st agent.DaemonStatus) bool {
		return st.AgentVersion == "2.0.0" && app(st, "edgefleet-agent").State == agent.StateCommitted
	})
	if a := app(st, "edgefleet-agent"); a.Version != "2.0.0" || !hasEvent(a.History, "boot-on-trial") {
		t.Fatalf("after the self-update: %+v", a.AppStatus)
	}
	d.waitStatus("hello running under agent 2.0.0", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "1.0.0") })
	if n := ini.starts(); n != 1 {
		t.Fatalf("the good update needed %d starts by init, want 1 (re-exec keeps the process)", n)
	}

	// Bad update: the new agent fails on trial; init restarts it; after
	// max_boots_on_trial it rolls back to 2.0.0 and re-executes that.
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("edgefleet-agent", "3.0.0", 3, v3bad))
	if !strings.Contains(out, "installed edgefleet-agent 3.0.0") {
		t.Fatalf("bad self sideload output:\n%s", out)
	}
	st = d.waitStatus("agent 2.0.0 back", func(st agent.DaemonStatus) bool {
		return st.AgentVersion == "2.0.0" && app(st, "edgefleet-agent").State == agent.StateRolledBack
	})
	a := app(st, "edgefleet-agent")
	if a.Version != "2.0.0" || !strings.Contains(a.LastError, "did not commit within 2 boots on trial") {
		t.Fatalf("after the bad self-update: %+v", a.AppStatus)
	}
	if v := versionAt(t, d.self); v != "2.0.0" {
		t.Fatalf("%s is %s after the rollback", d.self, v)
	}
	if n := ini.starts(); n < 3 {
		t.Fatalf("init started the agent %d times; the bad one should have failed and been restarted", n)
	}
	d.waitStatus("hello still running", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "1.0.0") })
	if !strings.Contains(ini.log.String(), "failing on purpose while on trial") {
		t.Fatalf("the bad agent never ran; log:\n%s", ini.log.String())
	}
}

// placeSelfAndHello puts agent binary self at the device's agent path and
// hello 1.0.0 at its app path, as a device provisioned with both.
func placeSelfAndHello(t *testing.T, d *device, self string) {
	t.Helper()
	for _, p := range []string{d.self, d.hello} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, self, d.self)
	copyFile(t, helloBin(t, "1.0.0", ""), d.hello)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// initSystem restarts the agent at d.self whenever it exits, like
// systemd's Restart=always.
type initSystem struct {
	mu    sync.Mutex
	n     int
	log   *syncBuffer
	stop  chan struct{}
	done  chan struct{}
	cur   *exec.Cmd
	curMu sync.Mutex
}

func (i *initSystem) starts() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.n
}

func startInit(t *testing.T, d *device) *initSystem {
	i := &initSystem{log: &syncBuffer{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(i.done)
		for {
			cmd := exec.Command(d.self, "run", "--config", d.cfgPath)
			cmd.Stdout, cmd.Stderr = i.log, i.log
			i.mu.Lock()
			i.n++
			i.mu.Unlock()
			if err := cmd.Start(); err != nil {
				fmt.Fprintf(i.log, "init: start: %v\n", err)
			} else {
				i.curMu.Lock()
				i.cur = cmd
				i.curMu.Unlock()
				err := cmd.Wait()
				fmt.Fprintf(i.log, "init: agent exited: %v\n", err)
			}
			select {
			case <-i.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if i.starts() > 20 {
				fmt.Fprintln(i.log, "init: giving up after 20 starts")
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(i.stop)
		i.curMu.Lock()
		if i.cur != nil && i.cur.Process != nil {
			i.cur.Process.Signal(syscall.SIGTERM)
		}
		i.curMu.Unlock()
		select {
		case <-i.done:
		case <-time.After(30 * time.Second):
			t.Error("init loop did not stop")
		}
		if t.Failed() || os.Getenv("EDGEFLEET_TEST_LOGS") != "" {
			t.Logf("agent log:\n%s", i.log.String())
		}
	})
	return i
}

// A corrupt state database does not brick the device: the daemon keeps the
// app running, status and sideload say what is wrong, reset (through the
// daemon) moves the file aside and installs work again.
func TestCorruptStateKeepsAppRunning(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "1.0.0", 1, helloBin(t, "1.0.0", "")))
	garbage := bytes.Repeat([]byte("not a bbolt file "), 1024)
	if err := os.WriteFile(filepath.Join(d.data, "state.db"), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	d.startDaemon(d.cli)
	st := d.waitStatus("hello running without state", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "1.0.0") })
	if st.StateError == "" || !strings.Contains(st.StateError, "reset") {
		t.Fatalf("status does not report the corrupt state with what to do: %q", st.StateError)
	}
	so, _, code := d.run("status", "--config", d.cfgPath)
	if code != 1 || !strings.Contains(so, "state error:") {
		t.Fatalf("status with a corrupt state: exit %d\n%s", code, so)
	}
	out := d.mustRun(1, "sideload", "--config", d.cfgPath, d.bundle("hello", "2.0.0", 2, helloBin(t, "2.0.0", "")))
	if !strings.Contains(out, "refused:") || !strings.Contains(out, "reset") {
		t.Fatalf("sideload with a corrupt state:\n%s", out)
	}
	out = d.mustRun(0, "reset", "--config", d.cfgPath)
	if !strings.Contains(out, "moved to") {
		t.Fatalf("reset output:\n%s", out)
	}
	st, _ = d.status()
	if st.StateError != "" || !runningVersion(st, "hello", "1.0.0") {
		t.Fatalf("after reset: state error %q, hello running %v", st.StateError, runningVersion(st, "hello", "1.0.0"))
	}
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, filepath.Join(d.dir, "hello-2.0.0.efb"))
	if !strings.Contains(out, "trial: committed") {
		t.Fatalf("sideload after reset:\n%s", out)
	}
	d.waitStatus("hello 2.0.0 running", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "2.0.0") })
}
