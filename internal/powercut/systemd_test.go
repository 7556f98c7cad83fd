package powercut

// The shipped service definitions under a real systemd: a Debian bookworm
// root filesystem (minbase plus systemd-sysv, built once per recipe by
// scripts/powercut.sh --install from guest/systemd-rootfs.sh) booted by
// the same kernel as the power-cut suite, with the units copied verbatim
// from docs/systemd, the project's static agent and the sample app.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// systemdRecipe builds the cached root filesystem; the image's name
// carries the first 16 hex digits of its sha256 (scripts/powercut.sh).
var systemdRecipe = filepath.Join("internal", "powercut", "guest", "systemd-rootfs.sh")

// findSystemdRootfs returns the root filesystem image built from the
// current recipe, or skips loudly.
func findSystemdRootfs(t *testing.T) string {
	t.Helper()
	root := testkit.RepoRoot(t)
	recipe, err := os.ReadFile(filepath.Join(root, systemdRecipe))
	must(t, err)
	sum := sha256.Sum256(recipe)
	dir := os.Getenv("EDGEFLEET_POWERCUT_SYSTEMD")
	if dir == "" {
		dir = filepath.Join(root, ".tools", "powercut", "systemd")
	}
	img := filepath.Join(dir, "rootfs-"+hex.EncodeToString(sum[:])[:16]+".img")
	if _, err := os.Stat(img); err != nil {
		t.Skipf("SKIP: no Debian root filesystem with systemd at %s for the current %s (scripts/powercut.sh --install builds it with mmdebstrap, as root or with sudo; or set EDGEFLEET_POWERCUT_SYSTEMD to the directory that holds it)", img, systemdRecipe)
	}
	return img
}

// Paths in the systemd guest, as docs/systemd's units name them.
const (
	sdAgentPath = "/usr/local/bin/edgefleet-agent"
	sdHelloPath = "/opt/hello/bin/hello"
	sdConfig    = "/etc/edgefleet/agent.yaml"
	sdDataDir   = "/var/lib/edgefleet"
	sdProbeDir  = "/usr/local/lib/edgefleet-powercut"
)

// buildSystemdGuest builds the initramfs that mounts the Debian root and
// hands over to systemd, carrying what the first boot copies onto it: the
// agent 2.0.0 and hello 1.0.0 installed and committed (by the agent code
// on this host, as goldenDisk does), the agent's configuration, the units
// from docs/systemd verbatim, the probe, and the self-update bundles:
// 3.0.0, which passes the install's probe but exits at start (hello
// stands in for it, as in cmd/edgefleet-agent's rescue test), 3.5.0,
// which hangs at start instead (hello -X main.hang=1), and a good 4.0.0.
func buildSystemdGuest(t *testing.T, h host) *guest {
	t.Helper()
	dir := t.TempDir()
	repo := testkit.RepoRoot(t)
	env := []string{"GOAMD64=v1", "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}
	agentBuild := func(v string) testkit.Build {
		return testkit.Build{Pkg: "cmd/edgefleet-agent", Env: env, LDFlags: "-s -w -X main.version=" + v}
	}
	bins := testkit.GoBuildAll(t, agentBuild("2.0.0"), agentBuild("4.0.0"))
	pubPath, priv := testkit.Keys(t, dir)
	bundle := func(app, v string, seq uint64, bin string) string {
		p := filepath.Join(dir, app+"-"+v+".efb")
		b := testkit.Bundle(t, testkit.Spec{App: app, Version: v, Sequence: seq, Binary: bin, Encoding: protocol.EncodingNone, ChunkSize: 256 << 10}, priv)
		must(t, os.WriteFile(p, b, 0o644))
		return p
	}

	root := filepath.Join(dir, "root")
	sys := filepath.Join(root, "pc", "sys") // copied onto the Debian root
	in := func(p string) string {
		p = filepath.Join(sys, p)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		return p
	}
	for _, d := range []string{"bin", "dev", "proc", "sys", "lib/modules", "pc"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	copyFile(t, h.busybox, filepath.Join(root, "bin", "busybox"), 0o755)
	copyFile(t, filepath.Join(repo, "internal", "powercut", "guest", "systemd-init.sh"), filepath.Join(root, "init"), 0o755)
	copyModules(t, h, root)

	// The units as shipped (EDGEFLEET_POWERCUT_SYSTEMD_UNITS: another
	// directory's, to try a change), and the probe's.
	units := filepath.Join(repo, "docs", "systemd")
	if d := os.Getenv("EDGEFLEET_POWERCUT_SYSTEMD_UNITS"); d != "" {
		units = d
		t.Logf("the units from %s, not docs/systemd", d)
	}
	for _, u := range []string{"edgefleet-agent.service", "edgefleet-agent-rescue.service"} {
		copyFile(t, filepath.Join(units, u), in("etc/systemd/system/"+u), 0o644)
	}
	copyFile(t, filepath.Join(repo, "internal", "powercut", "guest", "edgefleet-probe.service"), in("etc/systemd/system/edgefleet-probe.service"), 0o644)
	copyFile(t, filepath.Join(repo, "internal", "powercut", "guest", "systemd-probe.sh"), in(sdProbeDir+"/probe.sh"), 0o755)
	copyFile(t, bins[0], in(sdProbeDir+"/agent"), 0o755)
	copyFile(t, pubPath, in("etc/edgefleet/release.pub"), 0o644)
	must(t, os.Rename(bundle(agent.SelfApp, "3.0.0", 3, testkit.BuildHello(t, env, "3.0.0", "")), in(sdProbeDir+"/agent-3.0.0.efb")))
	must(t, os.Rename(bundle(agent.SelfApp, "3.5.0", 4, testkit.BuildHello(t, env, "3.5.0", "-X main.hang=1")), in(sdProbeDir+"/agent-3.5.0.efb")))
	must(t, os.Rename(bundle(agent.SelfApp, "4.0.0", 5, bins[1]), in(sdProbeDir+"/agent-4.0.0.efb")))
	apps := func(prefix string) []testkit.AgentApp {
		return []testkit.AgentApp{
			{Name: "hello", Path: prefix + sdHelloPath, Args: []string{"--serve"}, Window: "1s", MaxBootsOnTrial: 3},
			{Name: agent.SelfApp, Path: prefix + sdAgentPath, Window: "1s", MaxBootsOnTrial: 3},
		}
	}
	testkit.WriteAgentConfig(t, in(sdConfig), testkit.AgentConfig{DeviceID: "systemd", DataDir: sdDataDir, TrustedKeys: []string{"/etc/edgefleet/release.pub"}, Apps: apps("")})

	// The installed state, made on this host under sys.
	in(sdHelloPath)
	in(sdAgentPath)
	hostCfg := filepath.Join(dir, "host-agent.yaml")
	testkit.WriteAgentConfig(t, hostCfg, testkit.AgentConfig{DeviceID: "systemd", DataDir: in(sdDataDir), TrustedKeys: []string{pubPath}, Apps: apps(sys)})
	ac, err := agent.LoadConfig(hostCfg)
	must(t, err)
	a, err := agent.Open(ac, agent.Options{})
	must(t, err)
	for _, b := range []struct{ app, path string }{
		{"hello", bundle("hello", "1.0.0", 1, testkit.BuildHello(t, env, "1.0.0", ""))},
		{agent.SelfApp, bundle(agent.SelfApp, "2.0.0", 2, bins[0])},
	} {
		f, err := os.Open(b.path)
		must(t, err)
		_, err = a.Install(context.Background(), f, nil)
		f.Close()
		must(t, err)
		must(t, a.Commit(b.app))
	}
	must(t, a.Close())

	g := &guest{h: h, dir: dir, initrd: filepath.Join(dir, "initrd.cpio")}
	// -R 0:0: the files are root's on the guest whoever builds it.
	cmd := exec.Command("sh", "-c", "find . | "+h.cpio+" -o -H newc -R 0:0 --quiet > "+g.initrd)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	return g
}

// systemdDisk copies the cached root filesystem for one machine.
func systemdDisk(t *testing.T, img string) string {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("cp", "--sparse=always", img, disk).CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v: %s", img, err, out)
	}
	return disk
}

// systemdBoot boots the disk with systemd as PID 1 until the probe says
// PC:END (or cut returns true for a line) and fails t on a host error.
func systemdBoot(t *testing.T, g *guest, disk, cmdline string, cut func(l line, cut func()) bool) *bootResult {
	t.Helper()
	limit := 8 * time.Minute
	if strings.Contains(cmdline, "pc.hang=1") {
		limit = 20 * time.Minute // the agent that hangs: about 8 minutes of systemd's timeouts
	}
	res := g.boot(context.Background(), disk, "no_timer_check systemd.journald.forward_to_console=1 "+cmdline, limit, func(l line, c func()) bool {
		if strings.HasPrefix(l.text, "PC:END") || strings.HasPrefix(l.text, "PC:INITRDFAIL") {
			return true
		}
		return cut != nil && cut(l, c)
	})
	if res.err != nil {
		t.Fatalf("the systemd guest (%s): %v\n%s", cmdline, res.err, res.text())
	}
	if os.Getenv("EDGEFLEET_POWERCUT_VERBOSE") == "logs" {
		t.Logf("the systemd guest's console (%s):\n%s", cmdline, res.text())
	}
	if l, ok := res.find("PC:INITRDFAIL"); ok {
		t.Fatalf("the systemd guest's initramfs failed: %s\n%s", l.text, res.text())
	}
	return res
}

func daemonStatus(t *testing.T, res *bootResult, block string) agent.DaemonStatus {
	t.Helper()
	var st agent.DaemonStatus
	if err := json.Unmarshal([]byte(res.block(block)), &st); err != nil {
		t.Fatalf("the probe's %s is not the agent's status JSON: %v\n%s", block, err, res.text())
	}
	return st
}

func sdApp(st agent.DaemonStatus, name string) agent.DaemonAppState {
	for _, a := range st.Apps {
		if a.App == name {
			return a
		}
	}
	return agent.DaemonAppState{}
}

// helloRuns: hello's recorded release is version and its process runs.
func helloRuns(st agent.DaemonStatus, version string) bool {
	a := sdApp(st, "hello")
	return a.Version == version && a.Process != nil && a.Process.Running && a.Process.PID > 0
}

// TestSystemdUnitsBootAndRescue: docs/systemd's units, enabled with
// systemctl on a Debian guest, start the agent at boot (without waiting
// for a network that is down); a self-update to an agent that cannot start
// is rescued by edgefleet-agent-rescue.service after StartLimitBurst (the
// previous agent restored from edgefleet-agent.prev, the service running
// again, hello running again); and a power cut during a good self-update
// ends, on the next boot under systemd, in a working agent. Two boots of
// one disk; every check reads the guest's output, none its timing.
func TestSystemdUnitsBootAndRescue(t *testing.T) {
	mode(t)
	start := time.Now()
	h := findHost(t)
	img := findSystemdRootfs(t)
	t.Parallel() // its one machine at a time takes a slot the x86 cuts share (machines())
	g := buildSystemdGuest(t, h)
	t.Logf("built the guest in %s", time.Since(start).Round(100*time.Millisecond))
	// Where the good self-update 2.0.0 → 4.0.0 loses power: when the agent
	// logs that it re-executes the new binary (swapped in, on trial, not
	// yet started), and in the long run also at a random moment of it
	// (staging, swap, re-exec, trial and commit take 10-20 s under TCG).
	// The long run also has the agent hit its start limit for another
	// reason (killed at each start), and a self-update to an agent that
	// hangs at start, in the first scenario.
	long := os.Getenv("EDGEFLEET_POWERCUT") == "long"
	points := []string{"at-reexec"}
	if long {
		points = append(points, "random")
	}
	for i, point := range points {
		t.Run(point, func(t *testing.T) { systemdScenario(t, g, img, point, long && i == 0) })
	}
	t.Logf("TestSystemdUnitsBootAndRescue took %s", time.Since(start).Round(time.Second))
}

// systemdScenario: other adds the start limit hit for another reason and
// the agent that hangs at start (the long run: about 8 minutes more).
func systemdScenario(t *testing.T, g *guest, img, point string, other bool) {
	sem := machines()
	sem <- struct{}{}
	defer func() { <-sem }()
	begin := time.Now()
	cmdline := "pc.setup=1 pc.phase=rescue"
	wantPIDs := 3
	if other {
		cmdline += " pc.other=1 pc.hang=1"
		wantPIDs = 5
	}
	disk := systemdDisk(t, img)
	var cutAt string
	cutting := false
	res := systemdBoot(t, g, disk, cmdline, func(l line, cut func()) bool {
		switch {
		case strings.HasPrefix(l.text, "PC:CUT"):
			cutting = true
			if point == "random" {
				d := time.Duration(rand.Int64N(int64(15 * time.Second)))
				cutAt = fmt.Sprintf("%.1fs after the self-update to 4.0.0 began", d.Seconds())
				time.AfterFunc(d, cut)
			}
		case cutting && point == "at-reexec" && strings.Contains(l.text, "re-executing it"):
			cutAt = "when the agent re-executed 4.0.0"
			return true
		}
		return strings.HasPrefix(l.text, "PC:FAIL")
	})
	log := res.text()
	if l, ok := res.find("PC:FAIL"); ok {
		t.Fatalf("%s\n%s", l.text, log)
	}
	rescueTime := time.Since(begin)

	// 1. The agent at boot.
	if v := res.value("PC:ENABLED"); v != "enabled" {
		t.Fatalf("systemctl is-enabled edgefleet-agent.service says %q, want enabled\n%s", v, log)
	}
	up, ok := res.find("PC:AGENTUP")
	if !ok {
		t.Fatalf("the agent never came up\n%s", log)
	}
	st := daemonStatus(t, res, "STATUS1")
	if !st.Daemon || st.AgentVersion != "2.0.0" || !helloRuns(st, "1.0.0") {
		t.Fatalf("at boot: want the daemon 2.0.0 running hello 1.0.0, got %+v\n%s", st, log)
	}
	if v := res.value("PC:WAITONLINE"); v != "activating" {
		t.Fatalf("the agent came up when systemd-networkd-wait-online.service was %q: it waited for a network that is down (want it up while wait-online is still activating)\n%s", v, log)
	}
	mp := mainPIDs(res)
	if len(mp) != wantPIDs || mp[0] != strconv.Itoa(st.PID) {
		t.Fatalf("systemd's MainPID %v is not the daemon's pid %d: the agent does not run as the service's main process\n%s", mp, st.PID, log)
	}
	// Type=notify: the unit became active on the agent's READY=1, carries
	// its STATUS= line, and the agent pings the watchdog.
	if ty, sts, wd := res.value("PC:SDTYPE"), res.value("PC:SDSTATUS"), res.value("PC:SDWATCHDOG"); ty != "notify" || sts != "agent 2.0.0 running 2 apps" || wd != "1min 30s" {
		t.Fatalf("systemd says Type=%q StatusText=%q WatchdogUSec=%q; want notify, \"agent 2.0.0 running 2 apps\" (the agent's STATUS=), 1min 30s (docs/systemd)\n%s", ty, sts, wd, log)
	}

	// 2. The self-update to an agent that cannot start, and its rescue.
	if v := res.value("PC:SIDELOAD"); !strings.HasPrefix(v, "0 ") {
		t.Fatalf("sideloading the agent 3.0.0 that cannot start: exit %s\n%s", v, log)
	}
	if _, ok := res.find("PC:RESCUED"); !ok {
		t.Fatalf("no rescue\n%s", log)
	}
	j := res.block("JOURNAL")
	for _, want := range []string{
		"edgefleet-agent.service: Start request repeated too quickly.",
		"edgefleet-agent.service: Triggering OnFailure= dependencies.",
		"edgefleet-agent rolled back to 2.0.0",
		"Finished edgefleet-agent-rescue.service",
	} {
		if !strings.Contains(j, want) {
			t.Fatalf("the journal of the units lacks %q\n%s", want, log)
		}
	}
	st2 := daemonStatus(t, res, "STATUS2")
	self := sdApp(st2, agent.SelfApp)
	if !st2.Daemon || st2.AgentVersion != "2.0.0" || self.State != agent.StateRolledBack || !strings.Contains(self.LastError, "did not start") {
		t.Fatalf("after the rescue: want the daemon 2.0.0 with edgefleet-agent rolled back (did not start), got daemon %v agent %q, edgefleet-agent %+v\n%s", st2.Daemon, st2.AgentVersion, self.AppStatus, log)
	}
	if !helloRuns(st2, "1.0.0") {
		t.Fatalf("after the rescue hello 1.0.0 does not run: %+v\n%s", sdApp(st2, "hello"), log)
	}
	if mp[1] != strconv.Itoa(st2.PID) {
		t.Fatalf("after the rescue systemd's MainPID %s is not the daemon's pid %d\n%s", mp[1], st2.PID, log)
	}
	if v := res.value("PC:RESCUEAGAIN"); v != "0" || mp[2] != mp[1] || !strings.Contains(j, "a daemon is running: nothing to rescue") {
		t.Fatalf("the rescue unit started by hand with the daemon up (exit %s) did not leave it alone: MainPID %s → %s\n%s", v, mp[1], mp[2], log)
	}
	if v := lastValue(res, "PC:AGENTBIN"); !strings.Contains(v, "2.0.0") {
		t.Fatalf("after the rescue %s says %q, want 2.0.0\n%s", sdAgentPath, v, log)
	}
	if other {
		// A start limit hit for another reason (the agent killed at every
		// start): the rescue rolls nothing back and starts it again. The
		// manual rescue reset the start limit: StartLimitBurst=5 starts are
		// allowed, so the 6th kill is the one that fails the unit.
		if v := res.value("PC:KILLED"); !strings.HasPrefix(v, "6 ") {
			t.Fatalf("the probe killed the agent %s times until the rescue ran, want 6 (StartLimitBurst=5 after a reset)\n%s", v, log)
		}
		st3 := daemonStatus(t, res, "STATUS3")
		if !st3.Daemon || st3.AgentVersion != "2.0.0" || sdApp(st3, agent.SelfApp).State != agent.StateRolledBack || !helloRuns(st3, "1.0.0") ||
			mp[3] != strconv.Itoa(st3.PID) || strings.Count(j, "Triggering OnFailure=") < 2 || !strings.Contains(j, "edgefleet-agent is rolled-back, not on trial: nothing to rescue") {
			t.Fatalf("after a start limit hit for another reason: want the rescue to find nothing on trial and start the agent 2.0.0 again with hello (MainPID %s), got daemon %v agent %q (pid %d) hello %+v\n%s", mp[3], st3.Daemon, st3.AgentVersion, st3.PID, sdApp(st3, "hello"), log)
		}
		// The self-update to an agent that hangs after the re-exec: no
		// more pings, the watchdog kills it; it hangs at each start, each
		// start times out; the start limit hands over to the rescue unit,
		// which restores 2.0.0.
		if v := res.value("PC:SIDELOAD3"); !strings.HasPrefix(v, "0 ") {
			t.Fatalf("sideloading the agent 3.5.0 that hangs: exit %s\n%s", v, log)
		}
		st4 := daemonStatus(t, res, "STATUS4")
		self4 := sdApp(st4, agent.SelfApp)
		if !st4.Daemon || st4.AgentVersion != "2.0.0" || self4.State != agent.StateRolledBack || self4.Sequence != 2 || !helloRuns(st4, "1.0.0") || mp[4] != strconv.Itoa(st4.PID) {
			t.Fatalf("after the agent that hangs: want the rescue to have restored the daemon 2.0.0 (sequence 2, rolled back) running hello (MainPID %s), got daemon %v agent %q (pid %d), edgefleet-agent %+v, hello %+v\n%s", mp[4], st4.Daemon, st4.AgentVersion, st4.PID, self4.AppStatus, sdApp(st4, "hello"), log)
		}
		for _, want := range []string{"hanging on purpose", "edgefleet-agent.service: Watchdog timeout", "edgefleet-agent.service: start operation timed out"} {
			if !strings.Contains(j, want) {
				t.Fatalf("the journal of the units lacks %q\n%s", want, log)
			}
		}
		if n := strings.Count(j, "edgefleet-agent rolled back to 2.0.0"); n != 2 || strings.Count(j, "Triggering OnFailure=") != 3 {
			t.Fatalf("want two rescues that rolled back (3.0.0, 3.5.0) of three OnFailure triggers, got %d and %d\n%s", n, strings.Count(j, "Triggering OnFailure="), log)
		}
		h, _ := strconv.ParseFloat(res.value("PC:HANG"), 64)
		hd, _ := strconv.ParseFloat(res.value("PC:HANGDONE"), 64)
		t.Logf("an agent that hangs at start: sideloaded at %.1fs; watchdog kill +%.1fs; first start timed out +%.1fs; rescue triggered +%.1fs; the agent 2.0.0 and hello running again +%.1fs",
			h, journalAt(j, "Watchdog timeout", 1)-h, journalAt(j, "start operation timed out", 1)-h, journalAt(j, "Triggering OnFailure=", 3)-h, hd-h)
	}
	// Guest times from the journal (seconds since the kernel started).
	running := "agent 2.0.0 running"
	reexec, fail, rolled, again, hello2 := journalAt(j, "re-executing it", 1), journalAt(j, "Triggering OnFailure=", 1),
		journalAt(j, "rolled back to 2.0.0", 1), journalAt(j, running, 2), journalAt(j, "app hello: started", 2)
	t.Logf("systemd guest: agent 2.0.0 running %.1fs after the kernel started (hello started %.1fs; the probe saw it %.1fs after qemu started); the broken agent swapped in and re-executed at %.1fs; start limit hit, rescue triggered +%.1fs; previous agent restored +%.1fs; agent running again +%.1fs; hello running again +%.1fs (down since the re-exec); boot %s",
		journalAt(j, running, 1), journalAt(j, "app hello: started", 1), up.at.Seconds(), reexec, fail-reexec, rolled-reexec, again-reexec, hello2-reexec,
		rescueTime.Round(100*time.Millisecond))
	if other {
		o, _ := strconv.ParseFloat(res.value("PC:OTHER"), 64)
		od, _ := strconv.ParseFloat(res.value("PC:OTHERDONE"), 64)
		t.Logf("start limit hit for another reason (6 kills) to the agent and hello running again: %.1fs", od-o)
	}
	if testing.Verbose() {
		t.Logf("the units' journal:\n%s", j)
	}

	// 3. The power cut during a good self-update, and the next boot.
	if _, ok := res.find("PC:CUT"); !ok || cutAt == "" || !res.killed {
		t.Fatalf("the self-update to 4.0.0 never began or never reached the cut point %s\n%s", point, log)
	}
	if v := res.value("PC:SIDELOAD2"); v != "" && !strings.HasPrefix(v, "0 ") {
		t.Fatalf("sideloading the agent 4.0.0: exit %s\n%s", v, log)
	}
	_, done := res.find("PC:DONE")
	chk := systemdBoot(t, g, disk, "pc.phase=check", nil)
	log += "--- the next boot ---\n" + chk.text()
	if l, ok := chk.find("PC:FAIL"); ok {
		t.Fatalf("%s\n%s", l.text, log)
	}
	st = daemonStatus(t, chk, "STATUS")
	self = sdApp(st, agent.SelfApp)
	if !st.Daemon || (st.AgentVersion != "2.0.0" && st.AgentVersion != "4.0.0") || !helloRuns(st, "1.0.0") {
		t.Fatalf("after the cut: want the daemon at 2.0.0 or 4.0.0 running hello 1.0.0, got daemon %v agent %q hello %+v\n%s", st.Daemon, st.AgentVersion, sdApp(st, "hello"), log)
	}
	if self.Version != st.AgentVersion || !strings.Contains(chk.value("PC:AGENTBIN"), st.AgentVersion) {
		t.Fatalf("after the cut the daemon runs %s, the record says %s (%s), %s holds %q\n%s", st.AgentVersion, self.Version, self.State, sdAgentPath, chk.value("PC:AGENTBIN"), log)
	}
	if mp := mainPIDs(chk); len(mp) != 1 || mp[0] != strconv.Itoa(st.PID) {
		t.Fatalf("systemd's MainPID %v is not the daemon's pid %d\n%s", mp, st.PID, log)
	}
	// systemctl stop: the agent got SIGTERM and stopped hello itself, in
	// time, and systemd killed nothing.
	cj := chk.block("JOURNAL")
	if v := chk.value("PC:STOPPED"); v != "0 success" || !strings.HasPrefix(chk.value("PC:HELLOAFTERSTOP"), "gone ") || chk.value("PC:HELLOAFTERSTOP") == "gone" ||
		!strings.Contains(cj, "stopping:") || strings.Contains(cj, "SIGKILL") || strings.Contains(cj, "timed out") {
		t.Fatalf("systemctl stop edgefleet-agent.service: %q, hello after it: %q; want the agent to stop hello on SIGTERM and exit in time, nothing killed by systemd\n%s", v, chk.value("PC:HELLOAFTERSTOP"), log)
	}
	t.Logf("power cut %s (the update had finished: %v); the next boot under systemd runs agent %s (%s) and hello 1.0.0, settled %.1fs after qemu started; both boots %s",
		cutAt, done, st.AgentVersion, self.State, mustFind(chk, "PC:SETTLED").at.Seconds(), time.Since(begin).Round(100*time.Millisecond))
}

// journalAt is the guest's monotonic time (seconds since the kernel
// started) of the nth (from 1) journal line that contains s, or -1.
func journalAt(j, s string, nth int) float64 {
	for _, l := range strings.Split(j, "\n") {
		if !strings.Contains(l, s) {
			continue
		}
		if nth--; nth > 0 {
			continue
		}
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "["))
		f, err := strconv.ParseFloat(strings.TrimSpace(strings.SplitN(l, "]", 2)[0]), 64)
		if err != nil {
			return -1
		}
		return f
	}
	return -1
}

// lastValue is the last line's value that starts with prefix.
func lastValue(res *bootResult, prefix string) string {
	v := ""
	for _, l := range res.lines {
		if strings.HasPrefix(l.text, prefix) {
			v = strings.TrimSpace(strings.TrimPrefix(l.text, prefix))
		}
	}
	return v
}

// mainPIDs lists the MainPID values the probe printed, in order.
func mainPIDs(res *bootResult) []string {
	var out []string
	for _, l := range res.lines {
		if strings.HasPrefix(l.text, "PC:MAINPID ") {
			out = append(out, strings.TrimSpace(strings.TrimPrefix(l.text, "PC:MAINPID ")))
		}
	}
	return out
}

func mustFind(res *bootResult, prefix string) line {
	l, _ := res.find(prefix)
	return l
}
