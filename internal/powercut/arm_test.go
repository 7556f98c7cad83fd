package powercut

// The ARM device: a Raspberry-Pi-class board (qemu-system-arm -M virt
// -cpu cortex-a7, Debian's armhf armmp kernel, busybox armhf) whose init
// starts the project's armv7 agent from its disk at boot. It installs the
// fleet's sample app over MQTT, reads its CPU facts from the real
// kernel's auxiliary vector, loses power during a self-update of the
// agent, and on the next boot finishes or undoes it and catches up with
// the fleet.

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// armCPU is the board's CPU (EDGEFLEET_POWERCUT_ARM_CPU overrides it).
const armCPU = "cortex-a7"

// cortexA7Features are the AT_HWCAP flags Debian's armmp kernel gives a
// Cortex-A7 (qemu's cortex-a7 model): the features /proc/cpuinfo prints
// on a Raspberry Pi 2, less swp (an ARMv7 kernel without SWP emulation).
var cortexA7Features = []string{"half", "thumb", "fastmult", "vfp", "edsp", "thumbee", "neon", "vfpv3", "tls", "vfpv4", "idiva", "idivt", "vfpd32", "lpae", "evtstrm"}

// armModules are loaded (with what they depend on, first) by the guest's
// init: the armmp kernel has virtio itself built in, but its MMIO
// transport, the block and net drivers and ext4 as modules; ext4's
// checksums need crc32c (a soft dependency modinfo does not list).
var armModules = []string{"virtio_mmio", "virtio_blk", "virtio_net", "crc32c_generic", "ext4"}

// findARMHost skips loudly when something is missing.
func findARMHost(t *testing.T) host {
	t.Helper()
	var h host
	for _, x := range []struct {
		p    *string
		name string
	}{{&h.qemu, "qemu-system-arm"}, {&h.mkfs, "mkfs.ext4"}, {&h.cpio, "cpio"}} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + x.name); err2 != nil {
				t.Skipf("SKIP: %s not found (scripts/powercut.sh --install installs qemu-system-arm, e2fsprogs, cpio)", x.name)
			}
			p = "/usr/sbin/" + x.name
		}
		*x.p = p
	}
	dir := os.Getenv("EDGEFLEET_POWERCUT_ARM")
	if dir == "" {
		dir = filepath.Join(testkit.RepoRoot(t), ".tools", "powercut", "arm")
	}
	ks, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	ms, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	h.busybox = filepath.Join(dir, "bin", "busybox")
	if len(ks) == 0 || len(ms) == 0 {
		t.Skipf("SKIP: no Debian armhf kernel under %s (scripts/powercut.sh --install unpacks linux-image-*-armmp and busybox-static armhf there; or set EDGEFLEET_POWERCUT_ARM)", dir)
	}
	if f, err := elf.Open(h.busybox); err != nil || f.Machine != elf.EM_ARM {
		t.Skipf("SKIP: no armhf busybox at %s (scripts/powercut.sh --install unpacks busybox-static armhf there)", h.busybox)
	}
	h.kernel, h.moddir = ks[0], ms[0]
	return h
}

// moduleOrder resolves roots and their dependencies (the "depends=" of
// each module's .modinfo section) to .ko files under moddir, dependencies
// first: the unpacked package has no modules.dep (depmod runs at install).
func moduleOrder(moddir string, roots []string) ([]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(filepath.Join(moddir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			files[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(m string) error
	visit = func(m string) error {
		if seen[m] {
			return nil
		}
		seen[m] = true
		p, ok := files[m]
		if !ok {
			return fmt.Errorf("module %s.ko is not under %s (built in? then drop it from armModules)", m, moddir)
		}
		f, err := elf.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if s := f.Section(".modinfo"); s != nil {
			b, err := s.Data()
			if err != nil {
				return err
			}
			for _, kv := range bytes.Split(b, []byte{0}) {
				if deps, ok := strings.CutPrefix(string(kv), "depends="); ok && deps != "" {
					for _, d := range strings.Split(deps, ",") {
						if err := visit(strings.ReplaceAll(d, "-", "_")); err != nil {
							return err
						}
					}
				}
			}
		}
		order = append(order, p)
		return nil
	}
	for _, m := range roots {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// armGuest is the ARM device and its fleet.
type armGuest struct {
	*guest
	agentBin string // the armv7 agent 1.0.0 (also the guest's /pc/agent)
	golden   string // the factory disk: edgefleet-agent 1.0.0 committed, no hello
	cpu      string // qemu's -cpu
	n        int    // devices booted so far (IDs and channels)
	mu       sync.Mutex
}

const armSelfPath = "/opt/edgefleet/bin/edgefleet-agent"

func buildARMGuest(t *testing.T, h host) *armGuest {
	t.Helper()
	dir := t.TempDir()
	g := &armGuest{guest: &guest{h: h, dir: dir, fleet: startFleet(t), bundles: map[string]string{}}}
	cpu := armCPU
	if c := os.Getenv("EDGEFLEET_POWERCUT_ARM_CPU"); c != "" {
		cpu = c
	}
	g.cpu = cpu
	g.qemuArgs = func(disk, cmdline string) []string {
		// highmem=off: the armmp kernel is not LPAE; keep the board's
		// devices below 4 GiB.
		return []string{"-M", "virt,highmem=off", "-cpu", cpu, "-m", "256", "-smp", "1", "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults",
			"-serial", "stdio", "-kernel", h.kernel, "-initrd", g.initrd,
			"-append", "console=ttyAMA0 quiet panic=-1 " + cmdline,
			"-drive", "id=d0,file=" + disk + ",format=raw,if=none,cache=writeback", "-device", "virtio-blk-device,drive=d0",
			"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"}
	}
	v7 := testkit.Target{GOARCH: "arm", GOARM: "7"}
	v6 := testkit.Target{GOARCH: "arm", GOARM: "6"}
	ab := func(v string) testkit.Build {
		return testkit.Build{Pkg: "cmd/edgefleet-agent", Env: v7.Env(), LDFlags: "-s -w -X main.version=" + v}
	}
	hb := func(tg testkit.Target, v string) testkit.Build {
		return testkit.Build{Pkg: "testdata/apps/hello", Env: tg.Env(), LDFlags: "-s -w -X main.version=" + v}
	}
	bins := testkit.GoBuildAll(t, ab("1.0.0"), ab("2.0.0"), hb(v7, "1.0.0"), hb(v7, "1.1.0"), hb(v6, "1.0.0"))
	g.agentBin = bins[0]
	pubPath, priv := testkit.Keys(t, dir)
	g.fleet.keyring = protocol.NewKeyring(testkit.Public(priv))
	bundle := func(name string, s testkit.Spec) {
		s.Encoding, s.ChunkSize = protocol.EncodingNone, 256<<10
		p := filepath.Join(dir, name+".efb")
		must(t, os.WriteFile(p, testkit.Bundle(t, s, priv), 0o644))
		g.bundles[name] = p
	}
	// The factory image's agent has no probe: the host that provisions
	// the disk cannot run an ARM binary.
	bundle("agent-1.0.0", testkit.Spec{App: agent.SelfApp, Version: "1.0.0", Sequence: 1, Profile: "linux-armv7", Target: v7, Binary: bins[0], NoProbe: true})
	bundle("agent-2.0.0", testkit.Spec{App: agent.SelfApp, Version: "2.0.0", Sequence: 2, Profile: "linux-armv7", Target: v7, Binary: bins[1]})
	bundle("hello-1.0.0", testkit.Spec{Version: "1.0.0", Sequence: 1, Profile: "linux-armv7", Target: v7, Binary: bins[2]})
	bundle("hello-1.1.0", testkit.Spec{Version: "1.1.0", Sequence: 2, Profile: "linux-armv7", Target: v7, Binary: bins[3]})
	bundle("hello-1.0.0-armv6", testkit.Spec{Version: "1.0.0", Sequence: 1, Profile: "linux-armv6", Target: v6, Binary: bins[4]})

	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "run", "lib/modules", "pc"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	copyFile(t, h.busybox, filepath.Join(root, "bin", "busybox"), 0o755)
	copyFile(t, filepath.Join(testkit.RepoRoot(t), "internal", "powercut", "guest", "arm-init.sh"), filepath.Join(root, "init"), 0o755)
	copyFile(t, bins[0], filepath.Join(root, "pc", "agent"), 0o755)
	copyFile(t, pubPath, filepath.Join(root, "pc", "release.pub"), 0o644)
	kos, err := moduleOrder(h.moddir, armModules)
	if err != nil {
		t.Skipf("SKIP: %v", err)
	}
	var names []string
	for _, ko := range kos {
		n := strings.TrimSuffix(filepath.Base(ko), ".ko")
		names = append(names, n)
		copyFile(t, ko, filepath.Join(root, "lib", "modules", n+".ko"), 0o644)
	}
	must(t, os.WriteFile(filepath.Join(root, "pc", "modules"), []byte(strings.Join(names, " ")+"\n"), 0o644))
	// QEMU's user network shows the host's loopback as 10.0.2.2. The
	// init sets device_id and channel per boot.
	testkit.WriteAgentConfig(t, filepath.Join(root, "pc", "agent.yaml"), testkit.AgentConfig{DeviceID: "rpi", DataDir: "/mnt/data",
		TrustedKeys: []string{"/pc/release.pub"}, Broker: "tcp://10.0.2.2:" + g.fleet.port, Channel: "stable",
		Apps: []testkit.AgentApp{{Name: "hello", Path: "/mnt/opt/hello/bin/hello", Args: []string{"--serve"}, Window: "1s", MaxBootsOnTrial: 3},
			{Name: agent.SelfApp, Path: "/mnt" + armSelfPath, Window: "1s", MaxBootsOnTrial: 3}}})
	g.initrd = filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | "+h.cpio+" -o -H newc --quiet > "+g.initrd)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}

	// The factory disk: the agent 1.0.0 installed and committed as app
	// edgefleet-agent by the same agent code on this host, for a
	// Cortex-A7; hello not yet installed (the fleet installs it).
	tree := filepath.Join(dir, "factory-tree")
	must(t, os.MkdirAll(filepath.Join(tree, filepath.Dir(armSelfPath)), 0o755))
	must(t, os.MkdirAll(filepath.Join(tree, "opt", "hello", "bin"), 0o755))
	hostCfg := filepath.Join(dir, "factory-agent.yaml")
	testkit.WriteAgentConfig(t, hostCfg, testkit.AgentConfig{DeviceID: "rpi", DataDir: filepath.Join(tree, "data"), TrustedKeys: []string{pubPath},
		Apps: []testkit.AgentApp{{Name: "hello", Path: filepath.Join(tree, "opt", "hello", "bin", "hello")}, {Name: agent.SelfApp, Path: filepath.Join(tree, armSelfPath)}}})
	ac, err := agent.LoadConfig(hostCfg)
	must(t, err)
	a7 := hardware.CPUFacts{GOARCH: "arm", HWCAP: hardware.HWCAP_ARM_VFP | hardware.HWCAP_ARM_VFPv3, ARMLevel: 7, Platform: "v7l"}
	a, err := agent.Open(ac, agent.Options{CPU: &a7})
	must(t, err)
	f, err := os.Open(g.bundles["agent-1.0.0"])
	must(t, err)
	_, err = a.Install(context.Background(), f, nil)
	f.Close()
	must(t, err)
	must(t, a.Commit(agent.SelfApp))
	must(t, a.Close())
	g.golden = filepath.Join(dir, "factory.img")
	if out, err := exec.Command(h.mkfs, "-q", "-F", "-t", "ext4", "-d", tree, g.golden, "128M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	return g
}

// publish puts a bundle on a channel (edgefleet publish).
func (g *armGuest) publish(ctx context.Context, channel, bundle string) error {
	_, err := fleet.PublishBundle(ctx, g.fleet.pub, g.bundles[bundle], fleet.PublishOptions{Channel: channel, Keyring: g.fleet.keyring})
	if err != nil {
		return fmt.Errorf("publish %s on %s: %w", bundle, channel, err)
	}
	return nil
}

// deviceStatus polls the device's retained status on the broker until ok
// accepts it (or 60 s pass; then the last one, or nil).
func (g *armGuest) deviceStatus(ctx context.Context, dev string, ok func(*protocol.DeviceStatus) bool) *protocol.DeviceStatus {
	var last *protocol.DeviceStatus
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		sts, _, err := fleet.DeviceStatuses(ctx, g.fleet.pub, []string{dev})
		if err == nil && sts[dev] != nil {
			last = sts[dev]
			if ok(last) {
				break
			}
		}
	}
	return last
}

func reportOf(st *protocol.DeviceStatus, app string) protocol.AppReport {
	if st != nil {
		for _, a := range st.Apps {
			if a.App == app {
				return a
			}
		}
	}
	return protocol.AppReport{}
}

// ends: the lines after which a boot is over (the host cuts the power).
func ends(l line) bool {
	return l.text == "PC:END" || strings.HasPrefix(l.text, "PC:MOUNTFAIL") || strings.Contains(l.text, "Kernel panic")
}

// firstBoot boots the factory disk once: the agent starts from init,
// installs hello 1.0.0 from the fleet (published for linux-armv6 and
// linux-armv7: it must pick armv7 from its CPU facts), reports its facts.
func (g *armGuest) firstBoot(t *testing.T, ctx context.Context, disk, dev, channel string) (*bootResult, *protocol.DeviceStatus) {
	t.Helper()
	must(t, g.publish(ctx, channel, "hello-1.0.0-armv6"))
	must(t, g.publish(ctx, channel, "hello-1.0.0"))
	var st *protocol.DeviceStatus
	sem := machines()
	sem <- struct{}{}
	defer func() { <-sem }()
	b := g.boot(ctx, disk, "pc.phase=first pc.dev="+dev+" pc.channel="+channel, 5*time.Minute, func(l line, _ func()) bool {
		if l.text == "PC:END" {
			// The daemon still runs: its status on the broker, once it
			// reports hello committed.
			st = g.deviceStatus(ctx, dev, func(s *protocol.DeviceStatus) bool {
				return reportOf(s, "hello").State == agent.StateCommitted
			})
		}
		return ends(l)
	})
	if b.err != nil {
		t.Fatalf("first boot: %v\n%s", b.err, b.text())
	}
	if _, ok := b.find("PC:HELLO"); !ok {
		t.Fatalf("first boot: the agent started by init did not install hello 1.0.0 from the fleet\n%s", b.text())
	}
	return b, st
}

// checkFacts asserts that the agent read a Cortex-A7 from the guest
// kernel's auxiliary vector, in facts --json and in its status on the
// broker.
func checkFacts(t *testing.T, b *bootResult, st *protocol.DeviceStatus) hardware.CPUFacts {
	t.Helper()
	var f struct {
		CPU      hardware.CPUFacts `json:"cpu"`
		Kernel   string            `json:"kernel"`
		Machine  string            `json:"machine"`
		Profiles []string          `json:"profiles"`
	}
	if err := json.Unmarshal([]byte(b.block("FACTS")), &f); err != nil {
		t.Fatalf("facts --json on the device: %v\n%s", err, b.block("FACTS"))
	}
	c := f.CPU
	t.Logf("the device's agent reads from the kernel's auxiliary vector: %s, AT_HWCAP %#x (%s), AT_HWCAP2 %#x, AT_PLATFORM %q; kernel %s, machine %s; runs profiles %v",
		c, c.HWCAP, strings.Join(c.Features, " "), c.HWCAP2, c.Platform, f.Kernel, f.Machine, f.Profiles)
	if c.GOARCH != "arm" || c.ARMLevel != 7 || c.Platform != "v7l" || f.Machine != "armv7l" || !strings.HasSuffix(f.Kernel, "-armmp") {
		t.Errorf("the agent's facts are not an ARMv7 under Debian's armmp kernel: %+v, kernel %q, machine %q", c, f.Kernel, f.Machine)
	}
	if !slices.Equal(c.Features, cortexA7Features) {
		t.Errorf("the agent's CPU features %v are not a Cortex-A7's under this kernel %v", c.Features, cortexA7Features)
	}
	if len(f.Profiles) == 0 || f.Profiles[len(f.Profiles)-1] != "linux-armv7" {
		t.Errorf("the device runs profiles %v; a Cortex-A7 runs up to linux-armv7", f.Profiles)
	}
	want := "armv7 (vfp, vfpv3, vfpv4, neon, idiva)"
	switch {
	case st == nil:
		t.Errorf("no status of the device on the broker")
	case st.CPU != want || st.Profile != "linux-armv7" || st.AgentVersion != "1.0.0":
		t.Errorf("the device reports CPU %q, profile %q, agent %q on the broker; want CPU %q, profile linux-armv7 (hello was published for linux-armv6 and linux-armv7: it picks the most specific it runs), agent 1.0.0",
			st.CPU, st.Profile, st.AgentVersion, want)
	}
	return c
}

// armCut is one power cut of the self-update and its check.
type armCut struct {
	point                string // a failpoint, pointRandom or pointNone
	verdict, why         string
	boot, selfUpdate     time.Duration // cut boot: qemu start to PC:UP; PC:GO to PC:ACKSELF (uncut)
	cutAfter, checkBoot  time.Duration
	catchUp              time.Duration // check boot: PC:READY to PC:SETTLED
	final, finalSelfStat string
	recovery             []string // the agent's history after the cut: recovered, rolled back, failed
	log                  string
}

// runCut copies disk (the device after its first boot), boots it with
// the agent 2.0.0 published at PC:GO and the power cut at c.point (a
// random moment: delay after PC:GO), publishes hello 1.1.0 while it is
// off, and boots it again: the check.
func (g *armGuest) runCut(ctx context.Context, disk, point string, delay time.Duration) armCut {
	o := armCut{point: point}
	g.mu.Lock()
	g.n++
	n := g.n
	g.mu.Unlock()
	dev, channel := fmt.Sprintf("rpi-%d", n), fmt.Sprintf("arm-%d", n)
	d := filepath.Join(g.dir, fmt.Sprintf("cut-%d.img", n))
	defer os.Remove(d)
	if err := cloneFile(disk, d); err != nil {
		o.verdict, o.why = hostError, err.Error()
		return o
	}
	// The device's channel has what it runs: nothing to do until GO.
	if err := g.publish(ctx, channel, "hello-1.0.0"); err != nil {
		o.verdict, o.why = hostError, err.Error()
		return o
	}
	fp := ""
	if slices.Contains(agent.Failpoints, point) {
		fp = " pc.fp=" + point
	}
	var goAt time.Duration
	pubErr := make(chan error, 1)
	b1 := g.boot(ctx, d, "pc.phase=cut pc.dev="+dev+" pc.channel="+channel+fp, 5*time.Minute, func(l line, cutNow func()) bool {
		switch {
		case l.text == "PC:GO":
			goAt = l.at
			go func() { pubErr <- g.publish(ctx, channel, "agent-2.0.0") }()
			if point == pointRandom {
				time.AfterFunc(delay, cutNow)
			}
		case l.text == "PC:ACKSELF committed 2.0.0":
			o.selfUpdate = l.at - goAt
		case l.text == "PC:KILLED", l.text == "PC:DONE":
			return true
		}
		return ends(l) || strings.HasPrefix(l.text, "PC:NODAEMON")
	})
	o.log = "--- cut boot (" + point + ")\n" + b1.text()
	if up, ok := b1.find("PC:UP"); ok {
		o.boot = up.at
	}
	if b1.err != nil || goAt == 0 {
		o.verdict, o.why = hostError, fmt.Sprintf("the cut boot did not reach the self-update: %v", b1.err)
		return o
	}
	if err := <-pubErr; err != nil {
		o.verdict, o.why = hostError, err.Error()
		return o
	}
	o.cutAfter = b1.lines[len(b1.lines)-1].at - goAt
	if l, ok := b1.find("PC:FAILSTEP"); ok {
		o.verdict, o.why = stepFailed, "the self-update failed before the power cut: "+l.text
		return o
	}
	if _, ok := b1.find("PC:KILLED"); fp != "" && !ok {
		o.verdict, o.why = notReached, "the self-update finished without reaching the failpoint"
		return o
	}
	mustSelf := ""
	if _, ok := b1.find("PC:ACKSELF"); ok {
		mustSelf = "2.0.0"
	}
	// While the device is off, the fleet moves on.
	if err := g.publish(ctx, channel, "hello-1.1.0"); err != nil {
		o.verdict, o.why = hostError, err.Error()
		return o
	}
	b2 := g.boot(ctx, d, "pc.phase=check pc.dev="+dev+" pc.channel="+channel, 5*time.Minute, func(l line, _ func()) bool { return ends(l) })
	o.log += "--- check boot\n" + b2.text()
	end, ok := b2.find("PC:END")
	if !ok {
		o.verdict, o.why = hostError, "the check boot did not finish"
		if _, mf := b2.find("PC:MOUNTFAIL"); mf {
			o.verdict, o.why = bricked, "the disk does not mount"
		}
		return o
	}
	o.checkBoot = end.at
	if _, ok := b2.find("PC:NODAEMON"); ok {
		o.verdict, o.why = bricked, "the agent daemon does not start (PRE: "+b2.value("PC:PRE")+")"
		return o
	}
	r, _ := b2.find("PC:READY")
	s, _ := b2.find("PC:SETTLED")
	o.catchUp = s.at - r.at
	o.final = b2.value("PC:APP")
	o.finalSelfStat = b2.value("PC:SELF")
	o.verdict, o.why = classifySelf(b2, mustSelf)
	if o.verdict == bricked {
		return o
	}
	var whys []string
	if o.why != "" {
		whys = append(whys, o.why)
	}
	st, ok := parseStatus(b2.block("STATUS"))
	if f := strings.Fields(b2.value("PC:SETTLED")); len(f) == 0 || f[0] != "0" || !ok || st.Version != "1.1.0" || st.State != agent.StateCommitted || o.final != "1.1.0" {
		whys = append(whys, fmt.Sprintf("it did not catch up with the fleet: hello %s %s in the database, %q at the app path (want 1.1.0 committed)", st.State, st.Version, o.final))
		o.verdict = degraded
	}
	var full struct {
		Apps []struct {
			App, State string
			History    []agent.Event
		}
	}
	json.Unmarshal([]byte(b2.block("STATUS")), &full)
	for _, a := range full.Apps {
		if a.App != agent.SelfApp {
			continue
		}
		if o.finalSelfStat != "2.0.0" && a.State != agent.StateRolledBack {
			whys = append(whys, fmt.Sprintf("the agent is %s %s: neither the fleet's 2.0.0 nor rolled back", a.State, o.finalSelfStat))
			o.verdict = degraded
		}
		for _, ev := range a.History {
			if ev.Kind == "recovered" || ev.Kind == agent.StateRolledBack || ev.Kind == "failed" {
				o.recovery = append(o.recovery, ev.Kind+" "+ev.Version+": "+ev.Detail)
			}
		}
	}
	o.why = strings.Join(whys, "; ")
	return o
}

// TestARMDeviceBootsUpdatesAndSurvivesCut: a Cortex-A7 board boots with
// the armv7 agent under its init, installs the fleet's hello, reports the
// CPU its kernel describes, loses power during the agent's own update to
// 2.0.0, and on the next boot runs an allowed agent that its database
// agrees with, and catches up with hello 1.1.0 published meanwhile. The
// smoke cuts once, at swap-after-rename (the new agent renamed over the
// old one, nothing recorded); the long run also measures an uncut update,
// cuts at the other self-update points and at random moments.
func TestARMDeviceBootsUpdatesAndSurvivesCut(t *testing.T) {
	m := mode(t)
	if o := os.Getenv("EDGEFLEET_POWERCUT_ONLY"); o != "" && !slices.Contains(strings.Split(o, ","), "arm") {
		t.Skipf("SKIP: EDGEFLEET_POWERCUT_ONLY=%s leaves out the ARM device (add arm)", o)
	}
	h := findARMHost(t)
	t.Parallel() // its machines take the slots the x86 cuts share (machines())
	start := time.Now()
	g := buildARMGuest(t, h)
	built := time.Since(start)
	ctx := context.Background()

	first := filepath.Join(g.dir, "first.img")
	must(t, cloneFile(g.golden, first))
	b, st := g.firstBoot(t, ctx, first, "rpi-first", "arm-first")
	c := checkFacts(t, b, st)
	if q, err := exec.LookPath("qemu-arm"); err == nil {
		// What qemu-user tells the same binary, for comparison.
		out, err := exec.Command(q, "-cpu", g.cpu, g.agentBin, "facts", "--json").Output()
		var f struct {
			CPU hardware.CPUFacts `json:"cpu"`
		}
		if err == nil && json.Unmarshal(out, &f) == nil {
			t.Logf("qemu-user (%s -cpu %s) gives the same binary: %s, AT_HWCAP %#x (%s), AT_PLATFORM %q", q, g.cpu, f.CPU, f.CPU.HWCAP, strings.Join(f.CPU.Features, " "), f.CPU.Platform)
			if f.CPU.HWCAP != c.HWCAP {
				t.Logf("the device's AT_HWCAP came from its kernel, not qemu-user: only the kernel has %v, only qemu-user %v", minus(c.Features, f.CPU.Features), minus(f.CPU.Features, c.Features))
			}
		}
	}
	up, _ := b.find("PC:UP")
	ready, _ := b.find("PC:READY")
	hello, _ := b.find("PC:HELLO")
	t.Logf("first boot: qemu start to init's disk mounted %.1fs, agent ready %.1fs, hello 1.0.0 from the fleet committed %.1fs after (guest uptime at mount %s)",
		up.at.Seconds(), ready.at.Seconds(), (hello.at - ready.at).Seconds(), b.value("PC:UP"))

	points := []string{"swap-after-rename"}
	var work time.Duration
	if m != "smoke" {
		cal := g.runCut(ctx, first, pointNone, 0)
		if cal.verdict != survived || cal.selfUpdate == 0 {
			t.Fatalf("the uncut self-update did not survive: %s: %s\n%s", cal.verdict, cal.why, cal.log)
		}
		work = cal.selfUpdate
		t.Logf("uncut self-update 1.0.0→2.0.0 over MQTT (download, probe, swap, re-exec, trial, commit): %.1fs", work.Seconds())
		points = []string{"swap-after-rename", "swap-before-record", "commit-before-record", "stage-mid", "swap-after-record", "swap-after-link-prev"}
		n, _ := strconv.Atoi(os.Getenv("EDGEFLEET_POWERCUT_ARM_RANDOM"))
		if n <= 0 {
			n = 6
		}
		for range n {
			points = append(points, pointRandom)
		}
	}
	if o := os.Getenv("EDGEFLEET_POWERCUT_POINTS"); o != "" {
		points = slices.DeleteFunc(points, func(p string) bool { return !slices.Contains(strings.Split(o, ","), p) })
	}
	if len(points) == 0 {
		t.Skipf("SKIP: EDGEFLEET_POWERCUT_POINTS=%s leaves the ARM device no cut point", os.Getenv("EDGEFLEET_POWERCUT_POINTS"))
	}
	outs := make([]armCut, len(points))
	sem := machines()
	var wg sync.WaitGroup
	for i, p := range points {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			var delay time.Duration
			if work > 0 {
				delay = time.Duration(rand.Int64N(int64(work) * 11 / 10))
			}
			outs[i] = g.runCut(ctx, first, p, delay)
		}()
	}
	wg.Wait()
	var rows strings.Builder
	rows.WriteString("| cut point | verdict | cut boot | cut after GO | check boot | catch-up | agent after | hello after | the agent's recovery |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, o := range outs {
		fmt.Fprintf(&rows, "| %s | %s | %.1fs | %.1fs | %.1fs | %.1fs | %s | %s | %s |\n", o.point, o.verdict, o.boot.Seconds(), o.cutAfter.Seconds(), o.checkBoot.Seconds(), o.catchUp.Seconds(), o.finalSelfStat, o.final, orDash(strings.Join(o.recovery, "; ")))
	}
	writeReport(t, "powercut-arm.md", rows.String()+fmt.Sprintf("\nARM device (%s, %s): built in %s, whole test %s.\n", g.cpu, filepath.Base(h.kernel), built.Round(time.Second), time.Since(start).Round(time.Second)))
	verdicts := 0
	for _, o := range outs {
		if o.verdict != hostError {
			verdicts++
		}
	}
	if verdicts == 0 {
		t.Errorf("none of the %d cuts reached a verdict (all host errors): the ARM device proved nothing", len(outs))
	}
	for _, o := range outs {
		switch o.verdict {
		case survived:
		case hostError:
			t.Logf("host error (not a verdict on the agent): %s: %s\n%s", o.point, o.why, o.log)
		default:
			t.Errorf("%s: %s: %s\n%s", o.point, o.verdict, o.why, o.log)
		}
	}
	if os.Getenv("EDGEFLEET_POWERCUT_VERBOSE") == "logs" {
		t.Logf("first boot:\n%s", b.text())
		for _, o := range outs {
			t.Logf("%s", o.log)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// minus is a without the elements of b.
func minus(a, b []string) []string {
	return slices.DeleteFunc(slices.Clone(a), func(s string) bool { return slices.Contains(b, s) })
}
