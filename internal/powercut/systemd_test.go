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
		t.Skipf("SKIP: no Debian root filesystem with systemd at %s for the current %s (scripts/powercut.sh --install builds it with mmdebstrap, as root; or set EDGEFLEET_POWERCUT_SYSTEMD to the directory that holds it)", img, systemdRecipe)
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
// stands in for it, as in cmd/edgefleet-agent's rescue test), and a good
// 4.0.0.
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
	for _, m := range modules {
		ko, _ := filepath.Glob(filepath.Join(h.moddir, "kernel", "*", "*", m+".ko"))
		ko2, _ := filepath.Glob(filepath.Join(h.moddir, "kernel", "*", m+".ko"))
		ko = append(ko, ko2...)
		if len(ko) == 0 {
			t.Skipf("SKIP: module %s.ko not under %s (a Debian cloud kernel has it)", m, h.moddir)
		}
		copyFile(t, ko[0], filepath.Join(root, "lib", "modules", m+".ko"), 0o644)
	}
	must(t, os.WriteFile(filepath.Join(root, "pc", "modules"), []byte(strings.Join(modules, " ")+"\n"), 0o644))

	// The units as shipped, and the probe's.
	for _, u := range []string{"edgefleet-agent.service", "edgefleet-agent-rescue.service"} {
		copyFile(t, filepath.Join(repo, "docs", "systemd", u), in("etc/systemd/system/"+u), 0o644)
	}
	copyFile(t, filepath.Join(repo, "internal", "powercut", "guest", "edgefleet-probe.service"), in("etc/systemd/system/edgefleet-probe.service"), 0o644)
	copyFile(t, filepath.Join(repo, "internal", "powercut", "guest", "systemd-probe.sh"), in(sdProbeDir+"/probe.sh"), 0o755)
	copyFile(t, bins[0], in(sdProbeDir+"/agent"), 0o755)
	copyFile(t, pubPath, in("etc/edgefleet/release.pub"), 0o644)
	must(t, os.Rename(bundle(agent.SelfApp, "3.0.0", 3, testkit.BuildHello(t, env, "3.0.0", "")), in(sdProbeDir+"/agent-3.0.0.efb")))
	must(t, os.Rename(bundle(agent.SelfApp, "4.0.0", 4, bins[1]), in(sdProbeDir+"/agent-4.0.0.efb")))
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
	res := g.boot(context.Background(), disk, "systemd.journald.forward_to_console=1 "+cmdline, 8*time.Minute, func(l line, c func()) bool {
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

// guestUptime is the guest's uptime printed after "PC:WORD ".
func guestUptime(res *bootResult, prefix string) float64 {
	f, _ := strconv.ParseFloat(strings.Fields(res.value(prefix) + " x")[0], 64)
	return f
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
// systemctl on a Debian guest, start the agent at boot; a self-update to
// an agent that cannot start is rescued by edgefleet-agent-rescue.service
// after StartLimitBurst (the previous agent restored from
// edgefleet-agent.prev, the service running again, hello running again);
// and a power cut during a good self-update ends, on the next boot under
// systemd, in a working agent.
func TestSystemdUnitsBootAndRescue(t *testing.T) {
	mode(t)
	start := time.Now()
	h := findHost(t)
	img := findSystemdRootfs(t)
	g := buildSystemdGuest(t, h)
	t.Logf("built the guest in %s", time.Since(start).Round(100*time.Millisecond))

	t.Run("rescue", func(t *testing.T) {
		begin := time.Now()
		res := systemdBoot(t, g, systemdDisk(t, img), "pc.setup=1 pc.phase=rescue", nil)
		log := res.text()
		if l, ok := res.find("PC:FAIL"); ok {
			t.Fatalf("%s\n%s", l.text, log)
		}
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
		if mp := mainPIDs(res); len(mp) != 2 || mp[0] != strconv.Itoa(st.PID) {
			t.Fatalf("systemd's MainPID %v is not the daemon's pid %d: the agent does not run as the service's main process\n%s", mp, st.PID, log)
		}
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
		if mp := mainPIDs(res); mp[1] != strconv.Itoa(st2.PID) {
			t.Fatalf("after the rescue systemd's MainPID %s is not the daemon's pid %d\n%s", mp[1], st2.PID, log)
		}
		if v := res.value("PC:AGENTBIN"); !strings.Contains(v, "2.0.0") {
			t.Fatalf("after the rescue %s says %q, want 2.0.0", sdAgentPath, v)
		}
		rescued, _ := res.find("PC:RESCUED")
		t.Logf("systemd guest: agent up with hello %.1fs after qemu started (guest uptime %.1fs); broken self-update to rescued agent with hello running: %.1fs (guest uptime %.1fs → %.1fs; host %.1fs → %.1fs); boot %s",
			up.at.Seconds(), guestUptime(res, "PC:AGENTUP"), guestUptime(res, "PC:RESCUED")-guestUptime(res, "PC:BEGIN"),
			guestUptime(res, "PC:BEGIN"), guestUptime(res, "PC:RESCUED"), mustFind(res, "PC:BEGIN").at.Seconds(), rescued.at.Seconds(), time.Since(begin).Round(100*time.Millisecond))
		if testing.Verbose() {
			t.Logf("the units' journal:\n%s", j)
		}
	})

	t.Run("powercut", func(t *testing.T) {
		begin := time.Now()
		disk := systemdDisk(t, img)
		// A moment of the self-update 2.0.0 → 4.0.0 (staging, swap,
		// re-exec, trial, commit take a few seconds under TCG).
		delay := time.Duration(rand.Int64N(int64(6 * time.Second)))
		var begun time.Duration
		res := systemdBoot(t, g, disk, "pc.setup=1 pc.phase=cut", func(l line, cut func()) bool {
			if strings.HasPrefix(l.text, "PC:BEGIN") {
				begun = l.at
				time.AfterFunc(delay, cut)
			}
			return strings.HasPrefix(l.text, "PC:FAIL")
		})
		if l, ok := res.find("PC:FAIL"); ok {
			t.Fatalf("%s\n%s", l.text, res.text())
		}
		if begun == 0 {
			t.Fatalf("the self-update never began\n%s", res.text())
		}
		_, done := res.find("PC:DONE")
		t.Logf("power cut %.1fs after the self-update to 4.0.0 began (the update finished before it: %v)", delay.Seconds(), done)
		chk := systemdBoot(t, g, disk, "pc.phase=check", nil)
		log := res.text() + "--- the next boot ---\n" + chk.text()
		if l, ok := chk.find("PC:FAIL"); ok {
			t.Fatalf("%s\n%s", l.text, log)
		}
		st := daemonStatus(t, chk, "STATUS")
		self := sdApp(st, agent.SelfApp)
		if !st.Daemon || (st.AgentVersion != "2.0.0" && st.AgentVersion != "4.0.0") || !helloRuns(st, "1.0.0") {
			t.Fatalf("after the cut: want the daemon at 2.0.0 or 4.0.0 running hello 1.0.0, got daemon %v agent %q hello %+v\n%s", st.Daemon, st.AgentVersion, sdApp(st, "hello"), log)
		}
		if self.Version != st.AgentVersion || !strings.Contains(chk.value("PC:AGENTBIN"), st.AgentVersion) {
			t.Fatalf("after the cut the daemon runs %s, the record says %s (%s), %s holds %q\n%s", st.AgentVersion, self.Version, self.State, sdAgentPath, chk.value("PC:AGENTBIN"), log)
		}
		if mp := mainPIDs(chk); len(mp) != 1 || mp[0] != strconv.Itoa(st.PID) {
			t.Fatalf("systemd's MainPID %v is not the daemon's pid %d\n%s", mp, st.PID, log)
		}
		t.Logf("after the cut the agent runs %s (%s), hello 1.0.0 runs; settled %.1fs after qemu started; %s in all", st.AgentVersion, self.State, mustFind(chk, "PC:SETTLED").at.Seconds(), time.Since(begin).Round(100*time.Millisecond))
	})
	t.Logf("TestSystemdUnitsBootAndRescue took %s", time.Since(start).Round(time.Second))
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
