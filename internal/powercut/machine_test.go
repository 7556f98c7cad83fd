package powercut

// The emulated machine: finding qemu, busybox and the kernel, building the
// initramfs and the golden disk, one boot with its serial console read
// line by line.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	differ "github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
)

// modules are loaded in this order by the guest's init (the Debian cloud
// kernel has ext4 built in, virtio as modules).
var modules = []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net"}

// Mount option sets the suite runs under.
var mountSets = []string{"data=ordered", "data=ordered,noauto_da_alloc", "data=writeback,noauto_da_alloc"}

// host is what the machine needs from this computer.
type host struct {
	qemu, busybox, mkfs, cpio string
	kernel                    string // vmlinuz
	moddir                    string // lib/modules/<version>
}

// findHost skips loudly when something is missing.
func findHost(t *testing.T) host {
	t.Helper()
	var h host
	for _, x := range []struct {
		p    *string
		name string
	}{{&h.qemu, "qemu-system-x86_64"}, {&h.busybox, "busybox"}, {&h.mkfs, "mkfs.ext4"}, {&h.cpio, "cpio"}} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + x.name); err2 == nil {
				p = "/usr/sbin/" + x.name
			} else {
				t.Skipf("SKIP: %s not found (scripts/powercut.sh --install installs qemu-system-x86, busybox-static, e2fsprogs, cpio)", x.name)
			}
		}
		*x.p = p
	}
	if out, err := exec.Command("file", "-L", h.busybox).Output(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Skipf("SKIP: %s is not static (install busybox-static)", h.busybox)
	}
	dir := os.Getenv("EDGEFLEET_POWERCUT_KERNEL")
	if dir == "" {
		dir = filepath.Join(testkit.RepoRoot(t), ".tools", "powercut", "kernel")
	}
	ks, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	ms, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(ks) == 0 || len(ms) == 0 {
		t.Skipf("SKIP: no Debian kernel under %s (scripts/powercut.sh --install extracts linux-image-*-cloud-amd64 there; or set EDGEFLEET_POWERCUT_KERNEL)", dir)
	}
	h.kernel, h.moddir = ks[0], ms[0]
	return h
}

// guest is one agent build turned into a bootable machine.
type guest struct {
	h      host
	dir    string
	initrd string
	golden string // disk image with hello 1.0.0 installed and committed
	// goldenSelf (the self workload): hello 1.0.0 and the agent itself,
	// edgefleet-agent 1.0.0 at selfPath, installed and committed.
	goldenSelf string
	bundles    map[string]string // version → bundle file
	fleet      *hostFleet        // the broker the mqtt workload downloads from
	// qemuArgs, when set, replaces the x86 PC's qemu arguments (the ARM
	// device's virt board, arm_test.go).
	qemuArgs func(disk, cmdline string) []string
}

var versions = []string{"1.0.0", "1.1.0", "1.2.0"}

// buildGuest builds the agent (with tags, e.g. the broken-fsync proof
// build), the sample app at three versions, their bundles (TEST-ONLY keys),
// the initramfs and the golden disk. broker, when set, goes into the
// guest's agent configuration (the host as QEMU's user network sees it).
func buildGuest(t *testing.T, h host, tags string) *guest {
	t.Helper()
	return buildGuestWith(t, h, guestOptions{tags: tags})
}

// guestOptions: what buildGuestWith builds.
type guestOptions struct {
	tags string // go build -tags for the agent (a proof build); default none
	// noSelf leaves out the self workload's agent releases and disk
	// (a proof that never runs it builds faster); default false.
	noSelf bool
}

func buildGuestWith(t *testing.T, h host, o guestOptions) *guest {
	t.Helper()
	tags := o.tags
	dir := t.TempDir()
	g := &guest{h: h, dir: dir, fleet: startFleet(t)}
	env := []string{"GOAMD64=v1", "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}
	b := testkit.Build{Pkg: "cmd/edgefleet-agent", Env: env, LDFlags: "-s -w -X main.version=powercut"}
	if tags != "" {
		b.Flags = []string{"-tags", tags}
	}
	agentBin := testkit.GoBuild(t, b)
	pubPath, priv := testkit.Keys(t, dir)

	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "lib/modules", "pc/b"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	copyFile(t, h.busybox, filepath.Join(root, "bin", "busybox"), 0o755)
	copyFile(t, filepath.Join(testkit.RepoRoot(t), "internal", "powercut", "guest", "init.sh"), filepath.Join(root, "init"), 0o755)
	copyFile(t, agentBin, filepath.Join(root, "pc", "agent"), 0o755)
	copyFile(t, pubPath, filepath.Join(root, "pc", "release.pub"), 0o644)
	copyModules(t, h, root)
	cfg := testkit.AgentConfig{DeviceID: "powercut", DataDir: "/mnt/data", TrustedKeys: []string{"/pc/release.pub"},
		Apps: []testkit.AgentApp{{Name: "hello", Path: "/mnt/opt/hello/bin/hello", Args: []string{"--serve"}, Window: "1s", MaxBootsOnTrial: 3}}}
	testkit.WriteAgentConfig(t, filepath.Join(root, "pc", "agent.yaml"), cfg)
	// QEMU's user network shows the host's loopback as 10.0.2.2.
	cfg.Broker = "tcp://10.0.2.2:" + g.fleet.port
	testkit.WriteAgentConfig(t, filepath.Join(root, "pc", "agent-mqtt.yaml"), cfg)
	g.fleet.keyring = protocol.NewKeyring(testkit.Public(priv))
	bundles := map[string]string{}
	g.bundles = bundles
	bins := map[string]string{}
	for i, v := range versions {
		bin := testkit.BuildHello(t, env, v, "")
		bins[v] = bin
		bb := testkit.Bundle(t, testkit.Spec{Version: v, Sequence: uint64(i + 1), Binary: bin, Encoding: protocol.EncodingNone, ChunkSize: 256 << 10}, priv)
		p := filepath.Join(root, "pc", "b", "hello-"+v+".efb")
		must(t, os.WriteFile(p, bb, 0o644))
		bundles[v] = p
	}
	// The delta workload's bundle: 1.0.0 → 1.1.0, as pack --delta-from
	// makes it.
	delta := deltaBundle(t, bundles["1.1.0"], bins["1.0.0"], bins["1.1.0"], "1.0.0", priv)
	full, err := os.Stat(bundles["1.1.0"])
	must(t, err)
	if int64(len(delta)) > full.Size()/4 {
		t.Fatalf("the delta bundle 1.0.0→1.1.0 is %d bytes for a full bundle of %d: not a delta, the delta workload would prove nothing", len(delta), full.Size())
	}
	t.Logf("delta workload: the delta bundle 1.0.0→1.1.0 is %d bytes, the full 1.1.0 bundle %d", len(delta), full.Size())
	must(t, os.WriteFile(filepath.Join(root, "pc", "b", "hello-1.1.0.from-1.0.0.efb"), delta, 0o644))
	bundles["delta-1.1.0"] = filepath.Join(root, "pc", "b", "hello-1.1.0.from-1.0.0.efb")
	// The self workload: the agent at 1.0.0 and 2.0.0 (same build tags),
	// as releases of app edgefleet-agent, and a configuration that has it.
	selfVersions := []string{"1.0.0", "2.0.0"}
	if o.noSelf {
		selfVersions = nil
	}
	for i, v := range selfVersions {
		ab := b
		ab.LDFlags = "-s -w -X main.version=" + v
		bb := testkit.Bundle(t, testkit.Spec{App: agent.SelfApp, Version: v, Sequence: uint64(i + 1), Binary: testkit.GoBuild(t, ab), Encoding: protocol.EncodingNone, ChunkSize: 256 << 10}, priv)
		p := filepath.Join(root, "pc", "b", "agent-"+v+".efb")
		must(t, os.WriteFile(p, bb, 0o644))
		bundles["agent-"+v] = p
	}
	selfCfg := cfg
	selfCfg.Broker = ""
	selfCfg.Apps = append(slices.Clone(cfg.Apps), testkit.AgentApp{Name: agent.SelfApp, Path: "/mnt" + selfPath, Window: "1s", MaxBootsOnTrial: 3})
	testkit.WriteAgentConfig(t, filepath.Join(root, "pc", "agent-self.yaml"), selfCfg)

	g.initrd = filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | "+h.cpio+" -o -H newc --quiet > "+g.initrd)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}

	g.golden = g.goldenDisk(t, "golden", pubPath, "48M", bundles["1.0.0"])
	// Room for the agent three times (installed, staged, .prev).
	if !o.noSelf {
		g.goldenSelf = g.goldenDisk(t, "golden-self", pubPath, "128M", bundles["1.0.0"], bundles["agent-1.0.0"])
	}
	return g
}

// selfPath is where the self workload's agent lives on the disk.
const selfPath = "/opt/edgefleet/bin/edgefleet-agent"

// goldenDisk makes a disk image with hello (and, with a second bundle,
// the agent itself) installed and committed by the same agent code on
// this host, into a tree that mkfs.ext4 -d copies.
func (g *guest) goldenDisk(t *testing.T, name, pubPath, size string, bundles ...string) string {
	t.Helper()
	tree := filepath.Join(g.dir, name+"-tree")
	must(t, os.MkdirAll(filepath.Join(tree, "opt", "hello", "bin"), 0o755))
	apps := []testkit.AgentApp{{Name: "hello", Path: filepath.Join(tree, "opt", "hello", "bin", "hello"), Args: []string{"--serve"}}}
	names := []string{"hello"}
	if len(bundles) > 1 {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(tree, selfPath)), 0o755))
		apps = append(apps, testkit.AgentApp{Name: agent.SelfApp, Path: filepath.Join(tree, selfPath)})
		names = append(names, agent.SelfApp)
	}
	hostCfg := filepath.Join(g.dir, name+"-agent.yaml")
	testkit.WriteAgentConfig(t, hostCfg, testkit.AgentConfig{DeviceID: "powercut", DataDir: filepath.Join(tree, "data"), TrustedKeys: []string{pubPath}, Apps: apps})
	ac, err := agent.LoadConfig(hostCfg)
	must(t, err)
	a, err := agent.Open(ac, agent.Options{})
	must(t, err)
	for i, bp := range bundles {
		f, err := os.Open(bp)
		must(t, err)
		_, err = a.Install(context.Background(), f, nil)
		f.Close()
		must(t, err)
		must(t, a.Commit(names[i]))
	}
	must(t, a.Close())
	img := filepath.Join(g.dir, name+".img")
	if out, err := exec.Command(g.h.mkfs, "-q", "-F", "-t", "ext4", "-d", tree, img, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	return img
}

// deltaBundle signs a delta from the executable oldBin to the release
// the full bundle at fullPath describes (newBin), as the packer's
// --delta-from does (bsdiff, SPEC.md §8.10).
func deltaBundle(t *testing.T, fullPath, oldBin, newBin, baseVersion string, priv protocol.PrivateKey) []byte {
	t.Helper()
	raw, err := os.ReadFile(fullPath)
	must(t, err)
	b, err := protocol.OpenBundle(bytes.NewReader(raw), protocol.NewKeyring(testkit.Public(priv)))
	must(t, err)
	old, err := os.ReadFile(oldBin)
	must(t, err)
	nw, err := os.ReadFile(newBin)
	must(t, err)
	patch, st, err := differ.Diff(old, nw, differ.Options{})
	must(t, err)
	pl, err := protocol.DescribePayload(bytes.NewReader(patch), protocol.EncodingNone, b.Manifest.Payload.ChunkSize)
	must(t, err)
	pl.Encoding = protocol.EncodingBSDiff
	m := *b.Manifest
	m.Payload = pl
	sum := sha256.Sum256(old)
	m.Delta = &protocol.Delta{Format: protocol.DeltaFormatBSDiff40, BaseSize: int64(len(old)), BaseSHA256: hex.EncodeToString(sum[:]), BaseVersion: baseVersion,
		FullPayloadSHA256: b.Manifest.Payload.SHA256, ControlEntries: st.ControlEntries, MaxBzip2Level: differ.Options{}.MaxLevel()}
	return testkit.Sign(t, &m, patch, priv)
}

// hostFleet is the embedded broker on this host and a publisher.
type hostFleet struct {
	broker  *fleet.Broker
	port    string
	pub     paho.Client
	keyring *protocol.Keyring
}

func startFleet(t *testing.T) *hostFleet {
	t.Helper()
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	must(t, err)
	t.Cleanup(func() { b.Close() })
	_, port, err := net.SplitHostPort(strings.TrimPrefix(b.URL(), "tcp://"))
	must(t, err)
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: b.URL(), ClientID: "powercut-publisher"})
	must(t, err)
	t.Cleanup(func() { c.Disconnect(100) })
	return &hostFleet{broker: b, port: port, pub: c}
}

// assign makes version the device's desired release (edgefleet assign).
func (g *guest) assign(ctx context.Context, device, version string) error {
	_, err := fleet.PublishBundle(ctx, g.fleet.pub, g.bundles[version], fleet.PublishOptions{Device: device, Keyring: g.fleet.keyring})
	return err
}

// publishDelta publishes the delta 1.0.0→1.1.0 (retained, on its delta
// topic by result and base, SPEC.md §8.10), as edgefleet publish does
// with a delta bundle.
func (g *guest) publishDelta(ctx context.Context, device string) error {
	_, err := fleet.PublishBundle(ctx, g.fleet.pub, g.bundles["delta-1.1.0"], fleet.PublishOptions{Device: device, Keyring: g.fleet.keyring})
	return err
}

// line is one console line and when the host read it (since qemu started).
type line struct {
	at   time.Duration
	text string
}

// bootResult is what one boot printed.
type bootResult struct {
	lines  []line
	killed bool // the host cut the power
	err    error
}

func (b *bootResult) find(prefix string) (line, bool) {
	for _, l := range b.lines {
		if strings.HasPrefix(l.text, prefix) {
			return l, true
		}
	}
	return line{}, false
}

// findContains is the first line that contains s.
func (b *bootResult) findContains(s string) (line, bool) {
	for _, l := range b.lines {
		if strings.Contains(l.text, s) {
			return l, true
		}
	}
	return line{}, false
}

func (b *bootResult) value(prefix string) string {
	l, _ := b.find(prefix)
	return strings.TrimSpace(strings.TrimPrefix(l.text, prefix))
}

// block returns the lines between "PC:NAME{" and "PC:NAME}", without the
// daemon's own log lines, which share the console and can land inside
// (one "app hello: passed its trial, committed" broke a status's JSON).
func (b *bootResult) block(name string) string {
	var out []string
	in := false
	for _, l := range b.lines {
		switch {
		case l.text == "PC:"+name+"{":
			in = true
		case l.text == "PC:"+name+"}":
			in = false
		case in && strings.HasPrefix(l.text, "edgefleet-agent: "):
		case in:
			out = append(out, l.text)
		}
	}
	return strings.Join(out, "\n")
}

func (b *bootResult) text() string {
	var s strings.Builder
	for _, l := range b.lines {
		fmt.Fprintf(&s, "%7.2fs %s\n", l.at.Seconds(), l.text)
	}
	return s.String()
}

// boot runs one machine on disk until onLine returns true (then the
// power is cut: SIGKILL of qemu) or timeout. onLine also gets cut, which
// cuts the power from another goroutine (a timer).
func (g *guest) boot(ctx context.Context, disk, cmdline string, timeout time.Duration, onLine func(l line, cut func()) bool) *bootResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.h.qemu,
		"-M", "pc", "-m", "256", "-smp", "1", "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults",
		"-serial", "stdio", "-kernel", g.h.kernel, "-initrd", g.initrd,
		// no_timer_check: on a loaded host TCG is slow enough that the
		// kernel's IO-APIC timer check fails and it panics at boot ("IO-APIC
		// + timer doesn't work!", 2 of 24 boots in one smoke at load 14).
		"-append", "console=ttyS0 quiet panic=-1 no_timer_check "+cmdline,
		"-drive", "id=d0,file="+disk+",format=raw,if=none,cache=writeback", "-device", "virtio-blk-pci,drive=d0",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=")
	if g.qemuArgs != nil {
		cmd = exec.CommandContext(ctx, g.h.qemu, g.qemuArgs(disk, cmdline)...)
	}
	cmd.Stdin = nil
	// A test binary killed (a CI timeout, ^C) takes its machines with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return &bootResult{err: err}
	}
	cmd.Stderr = cmd.Stdout
	res := &bootResult{}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return &bootResult{err: err}
	}
	var once sync.Once
	cut := func() {
		once.Do(func() {
			res.killed = true
			cmd.Process.Kill() // SIGKILL: the power cut
		})
	}
	var mu sync.Mutex
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		t := strings.TrimRight(strings.ReplaceAll(sc.Text(), "\r", ""), " ")
		if i := strings.Index(t, "PC:"); i > 0 {
			t = t[i:] // after kernel noise on the same line
		}
		if t == "" {
			continue
		}
		l := line{at: time.Since(start), text: t}
		mu.Lock()
		res.lines = append(res.lines, l)
		mu.Unlock()
		if onLine(l, cut) {
			cut()
		}
	}
	io.Copy(io.Discard, out)
	werr := cmd.Wait()
	if !res.killed {
		res.err = fmt.Errorf("qemu ended before the host cut the power (%v, %v)", werr, ctx.Err())
	}
	return res
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	must(t, err)
	must(t, os.WriteFile(to, b, mode))
	must(t, os.Chmod(to, mode))
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// copyModules puts the kernel modules the guests load (modules) into the
// initramfs tree at root, and their names, in load order, into
// /pc/modules for the init; it skips the test loudly when one is missing.
func copyModules(t *testing.T, h host, root string) {
	t.Helper()
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
}
