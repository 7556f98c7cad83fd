package main

// Whole emulated devices with the real edgefleet-agent: the agent
// cross-built for linux/arm GOARM=6 runs under `qemu-arm -cpu arm1176` (a
// Raspberry Pi Zero/1 core) or `-cpu cortex-a7` (a Pi 2 class core); its
// children — the probe, the supervised hello app, the health command — run
// through binfmt_misc with QEMU_CPU naming the same core. CPU facts come
// from the emulated auxiliary vector, so the device decides as real
// hardware would. Bundles are signed here with protocol functions and
// TEST-ONLY keys; releases travel through a real embedded broker.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/emutest"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// emuHang bounds every wait on an emulated device. It guards against a hung
// test; it asserts nothing about speed (emulation is slow).
const emuHang = 3 * time.Minute

// armBuild is one cross-build of pkg for linux/arm at GOARM goarm
// (stripped, CGO off), made once per test binary.
func armBuild(pkg, goarm, ldflags string) testkit.Build {
	return testkit.Build{Pkg: pkg, Env: []string{"GOOS=linux", "GOARCH=arm", "GOARM=" + goarm}, LDFlags: "-s -w " + ldflags}
}

// emuBinaries are the ARM programs the emulation tests use.
type emuBinaries struct {
	agent            string // edgefleet-agent, GOARM=6
	hello6v1         string // hello 1.0.0, GOARM=6
	hello7v1         string // hello 1.0.0, GOARM=7
	hello7v2         string // hello 2.0.0, GOARM=7
	agentBuildTiming time.Duration
}

func emuBins(t testing.TB) emuBinaries {
	t.Helper()
	start := time.Now()
	p := testkit.GoBuildAll(t,
		armBuild("cmd/edgefleet-agent", "6", "-X main.version=1.0.0"),
		armBuild("testdata/apps/hello", "6", "-X main.version=1.0.0"),
		armBuild("testdata/apps/hello", "7", "-X main.version=1.0.0"),
		armBuild("testdata/apps/hello", "7", "-X main.version=2.0.0"),
	)
	return emuBinaries{agent: p[0], hello6v1: p[1], hello7v1: p[2], hello7v2: p[3], agentBuildTiming: time.Since(start)}
}

// emuDevice is one emulated ARM device in a temp dir: its CPU is core.
type emuDevice struct {
	t       *testing.T
	core    string
	agent   string
	dir     string
	priv    protocol.PrivateKey
	pub     protocol.PublicKey
	pubPath string
	cfgPath string
	data    string
	hello   string
	id      string
}

func newEmuDevice(t *testing.T, core, agentBin, brokerURL string) *emuDevice {
	t.Helper()
	dir := t.TempDir()
	pubPath, priv := testkit.Keys(t, dir)
	d := &emuDevice{t: t, core: core, agent: agentBin, dir: dir, priv: priv, pub: testkit.Public(priv),
		pubPath: pubPath,
		cfgPath: filepath.Join(dir, "agent.yaml"),
		data:    filepath.Join(dir, "data"),
		hello:   filepath.Join(dir, "opt", "hello", "bin", "hello"),
		id:      "pi-" + core,
	}
	// No profile: the device picks the best published profile its CPU
	// runs. Short health window: emulation is slow, the trial is not.
	testkit.WriteAgentConfig(t, d.cfgPath, testkit.AgentConfig{DeviceID: d.id, DataDir: d.data, TrustedKeys: []string{d.pubPath}, Broker: brokerURL,
		Apps: []testkit.AgentApp{{Name: "hello", Path: d.hello, Args: []string{"--serve"}, Window: "2s",
			HealthCommand: []string{d.hello, "--health"}, HealthTimeout: "30s"}}})
	return d
}

// command is the agent under `qemu-arm -cpu core`; QEMU_CPU makes its
// children (run through binfmt_misc) use the same core.
func (d *emuDevice) command(args ...string) *exec.Cmd {
	cmd := exec.Command("qemu-arm", append([]string{"-cpu", d.core, d.agent}, args...)...)
	cmd.Env = append(os.Environ(), "QEMU_CPU="+d.core)
	return cmd
}

// run runs an agent command on the device: stdout, stderr, exit code.
func (d *emuDevice) run(args ...string) (string, string, int) {
	d.t.Helper()
	cmd := d.command(args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return so.String(), se.String(), ee.ExitCode()
	case err != nil:
		d.t.Fatal(err)
	}
	return so.String(), se.String(), 0
}

func (d *emuDevice) mustRun(want int, args ...string) string {
	d.t.Helper()
	so, se, code := d.run(args...)
	if code != want {
		d.t.Fatalf("[%s] edgefleet-agent %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", d.core, strings.Join(args, " "), code, want, so, se)
	}
	return so
}

// bundle signs bin (a hello build for linux/arm GOARM=goarm) as hello
// version/seq for profile linux-armv<goarm> (unencoded, 256 KiB chunks,
// probe --version with a minute for emulation) and writes it to a file.
// testkit checks that bin is an ARM executable.
func (d *emuDevice) bundle(version string, seq uint64, goarm, bin string) string {
	d.t.Helper()
	return testkit.BundleFile(d.t, d.dir, testkit.Spec{Version: version, Sequence: seq, Profile: "linux-armv" + goarm,
		Target: testkit.Target{GOARCH: "arm", GOARM: goarm}, Binary: bin, Encoding: protocol.EncodingNone, ChunkSize: 256 << 10,
		Probe: &protocol.Probe{Args: []string{"--version"}, Expect: version, Timeout: protocol.Duration(time.Minute)}}, d.priv)
}

// statusJSON is `edgefleet-agent status --json`, run on the device.
func (d *emuDevice) statusJSON() agent.DaemonStatus {
	d.t.Helper()
	out := d.mustRun(0, "status", "--config", d.cfgPath, "--json")
	var st agent.DaemonStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		d.t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	return st
}

// socketStatus asks the daemon over its control socket (cheap to poll;
// the emulated CLI is the assertion, this is the wait).
func (d *emuDevice) socketStatus() (agent.DaemonStatus, bool) {
	return socketStatus(d.data, 10*time.Second)
}

// emuDaemon is `edgefleet-agent run` on an emulated device.
type emuDaemon struct {
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan error
	once    sync.Once
	stopErr error
}

// startDaemon starts the daemon on the device's core and stops it (SIGTERM)
// when the test ends, logging its output if the test failed.
func (d *emuDevice) startDaemon() *emuDaemon {
	d.t.Helper()
	dm := &emuDaemon{log: &syncBuffer{}, exited: make(chan error, 1)}
	dm.cmd = d.command("run", "--config", d.cfgPath, "--echo-output")
	dm.cmd.Stdout, dm.cmd.Stderr = dm.log, dm.log
	if err := dm.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() { dm.exited <- dm.cmd.Wait() }()
	d.t.Cleanup(func() {
		dm.stop()
		if d.t.Failed() || os.Getenv("EDGEFLEET_TEST_LOGS") != "" {
			d.t.Logf("emulated daemon log (%s):\n%s", d.core, dm.log.String())
		}
	})
	return dm
}

// stop sends SIGTERM (qemu-user passes it to the agent) and waits for the
// exit; it returns the daemon's exit error.
func (dm *emuDaemon) stop() error {
	dm.once.Do(func() {
		dm.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case dm.stopErr = <-dm.exited:
		case <-time.After(emuHang):
			dm.cmd.Process.Kill()
			<-dm.exited
			dm.stopErr = errors.New("the daemon did not exit after SIGTERM; killed")
		}
	})
	return dm.stopErr
}

// waitApp polls the daemon's control socket until cond holds for app.
func (d *emuDevice) waitApp(what, app string, cond func(agent.DaemonStatus) bool) agent.DaemonStatus {
	d.t.Helper()
	var last agent.DaemonStatus
	waitFor(d.t, what, func() bool {
		st, ok := d.socketStatus()
		if ok {
			last = st
		}
		return ok && cond(st)
	}, func() string { j, _ := json.MarshalIndent(last, "", "  "); return string(j) })
	return last
}

// assertEmulatedChild checks that pid (an app the emulated daemon started)
// runs through binfmt_misc's qemu-arm interpreter on core: the device is
// emulated as a whole, not just the agent.
func assertEmulatedChild(t *testing.T, pid int, core string) {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatalf("app pid %d: %v", pid, err)
	}
	if b := filepath.Base(exe); !strings.Contains(b, "qemu") && !strings.Contains(b, "binfmt") {
		t.Fatalf("app pid %d runs %s, not qemu-arm through binfmt_misc", pid, exe)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(env, []byte("\x00QEMU_CPU="+core+"\x00")) && !bytes.HasPrefix(env, []byte("QEMU_CPU="+core+"\x00")) {
		t.Fatalf("app pid %d does not have QEMU_CPU=%s in its environment", pid, core)
	}
	t.Logf("app pid %d runs emulated: %s with QEMU_CPU=%s", pid, exe, core)
}

// vmHWM returns a process's peak and current resident memory from
// /proc/PID/status ("?" when unreadable).
func vmHWM(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM") || strings.HasPrefix(l, "VmRSS") {
			parts = append(parts, strings.Join(strings.Fields(l), " "))
		}
	}
	return strings.Join(parts, ", ")
}

func fileHash(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// waitFor polls cond until it holds; emuHang only bounds a hung test.
func waitFor(t *testing.T, what string, cond func() bool, last func() string) {
	t.Helper()
	deadline := time.Now().Add(emuHang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s; last seen:\n%s", what, last())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

// TestEmulatedFieldEngineer: the real agent, cross-built for ARMv6, on an
// emulated Raspberry Pi Zero (arm1176): facts say ARM level 6; check and
// sideload install an armv6 bundle (probe emulated on the same core); an
// armv7 bundle is refused with the reason (GOARM=7 needs VFPv3) and the
// binary stays as it was. The same agent on a Cortex-A7 accepts the armv7
// bundle.
func TestEmulatedFieldEngineer(t *testing.T) {
	emutest.RequireARM(t)
	start := time.Now()
	bins := emuBins(t)
	t.Logf("cross-builds ready in %s", bins.agentBuildTiming.Round(time.Millisecond))
	for name, p := range map[string]string{"edgefleet-agent linux/arm GOARM=6": bins.agent, "hello GOARM=6": bins.hello6v1, "hello GOARM=7": bins.hello7v1} {
		if fi, err := os.Stat(p); err == nil {
			t.Logf("%s, stripped: %d bytes", name, fi.Size())
		}
	}

	t.Run("arm1176", func(t *testing.T) {
		d := newEmuDevice(t, "arm1176", bins.agent, "")
		var f hardware.Facts
		out := d.mustRun(0, "facts", "--config", d.cfgPath, "--json")
		if err := json.Unmarshal([]byte(out), &f); err != nil {
			t.Fatalf("facts --json is not JSON: %v\n%s", err, out)
		}
		if f.CPU.GOARCH != "arm" || f.CPU.ARMLevel != 6 {
			t.Fatalf("an arm1176 device reports GOARCH %q ARM level %d, want arm 6:\n%s", f.CPU.GOARCH, f.CPU.ARMLevel, out)
		}
		if f.Machine == runtime.GOARCH || strings.Contains(f.Machine, "x86") {
			t.Errorf("facts machine %q is the host's, not the emulated one", f.Machine)
		}

		v6 := d.bundle("1.0.0", 1, "6", bins.hello6v1)
		v7 := d.bundle("2.0.0", 2, "7", bins.hello7v2)
		refusesV7 := func(how string, args ...string) {
			t.Helper()
			out := d.mustRun(1, args...)
			if !containsAll(out, "refused:", "GOARM=7", "VFPv3") {
				t.Fatalf("%s of an armv7 bundle on an ARMv6 core does not say GOARM=7 needs VFPv3:\n%s", how, out)
			}
			t.Logf("arm1176, %s of armv7: %s", how, strings.TrimSpace(out[strings.Index(out, "refused:"):]))
		}
		// Nothing installed yet: the armv7 bundle is refused, nothing appears.
		refusesV7("check (empty device)", "check", "--config", d.cfgPath, v7)
		refusesV7("sideload (empty device)", "sideload", "--config", d.cfgPath, v7)
		if _, err := os.Stat(d.hello); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a refused sideload left a binary: %v", err)
		}

		out = d.mustRun(0, "check", "--config", d.cfgPath, v6)
		if !strings.Contains(out, "ok: ") || !strings.Contains(out, "would install here") {
			t.Fatalf("check of the armv6 bundle:\n%s", out)
		}
		if _, err := os.Stat(d.hello); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("check installed something: %v", err)
		}
		out = d.mustRun(0, "sideload", "--config", d.cfgPath, v6)
		if !containsAll(out, "no daemon running", "probe", "swap", "installed hello 1.0.0 (sequence 1") {
			t.Fatalf("sideload of the armv6 bundle:\n%s", out)
		}
		if fileHash(t, d.hello) != fileHash(t, bins.hello6v1) {
			t.Fatal("the installed binary is not the armv6 hello")
		}
		before := fileHash(t, d.hello)

		// The daemon (emulated too) runs the trial: hello and its health
		// command run on the ARMv6 core through binfmt_misc.
		dm := d.startDaemon()
		d.waitApp("hello 1.0.0 committed and running", "hello", func(st agent.DaemonStatus) bool {
			return app(st, "hello").State == agent.StateCommitted && runningVersion(st, "hello", "1.0.0")
		})
		refusesV7("sideload through the daemon", "sideload", "--config", d.cfgPath, v7)
		if err := dm.stop(); err != nil {
			t.Fatalf("the daemon's exit after SIGTERM: %v\n%s", err, dm.log.String())
		}
		refusesV7("check (committed, no daemon)", "check", "--config", d.cfgPath, v7)
		refusesV7("sideload (committed, no daemon)", "sideload", "--config", d.cfgPath, v7)
		if fileHash(t, d.hello) != before {
			t.Fatal("the refused armv7 sideload changed the binary")
		}
		st := d.statusJSON()
		if len(st.Apps) != 1 || st.Apps[0].Version != "1.0.0" || st.Apps[0].Sequence != 1 || st.Apps[0].State != agent.StateCommitted ||
			!containsAll(st.Apps[0].LastError, "2.0.0", "GOARM=7") || !hasEvent(st.Apps[0].History, "refused") {
			j, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("status --json after the refusals:\n%s", j)
		}
	})

	t.Run("cortex-a7", func(t *testing.T) {
		d := newEmuDevice(t, "cortex-a7", bins.agent, "")
		var f hardware.Facts
		if err := json.Unmarshal([]byte(d.mustRun(0, "facts", "--json")), &f); err != nil {
			t.Fatal(err)
		}
		if f.CPU.ARMLevel != 7 {
			t.Fatalf("a cortex-a7 device reports ARM level %d, want 7", f.CPU.ARMLevel)
		}
		v7 := d.bundle("2.0.0", 2, "7", bins.hello7v2)
		out := d.mustRun(0, "sideload", "--config", d.cfgPath, v7)
		if !strings.Contains(out, "installed hello 2.0.0 (sequence 2") {
			t.Fatalf("sideload of the armv7 bundle on a Cortex-A7:\n%s", out)
		}
		if fileHash(t, d.hello) != fileHash(t, bins.hello7v2) {
			t.Fatal("the installed binary is not the armv7 hello")
		}
	})
	t.Logf("field-engineer emulation: %s in all", time.Since(start).Round(time.Millisecond))
}

// TestEmulatedDeviceOverMQTT: a whole emulated Raspberry Pi Zero. The real
// agent runs as a daemon under `qemu-arm -cpu arm1176`, connected to an
// embedded broker on loopback, supervising hello (emulated through
// binfmt_misc). The operator publishes hello 1.0.0 for linux-armv7 and
// linux-armv6 on one channel: the device, with no profile configured,
// picks linux-armv6, installs it, passes its trial and reports committed.
// Then hello 2.0.0 is published for linux-armv7 only: once the channel
// offers nothing this CPU runs, and when 2.0.0 is assigned to the device
// directly, the device refuses it and says why — in its retained status
// (the operator's view) and in `edgefleet-agent status --json`.
func TestEmulatedDeviceOverMQTT(t *testing.T) {
	emutest.RequireARM(t)
	start := time.Now()
	bins := emuBins(t)
	built := time.Now()

	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	connect := func(id string) paho.Client {
		c, err := fleet.Connect(ctx, fleet.ClientOptions{Broker: b.URL(), ClientID: id})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c
	}
	// Separate clients for watching and publishing (see fleet.Subscribe).
	watcher, publisher := connect("test-watcher"), connect("test-publisher")
	view := fleet.NewFleetView()
	if err := fleet.Subscribe(ctx, watcher, protocol.DeviceFilters, func(topic string, p []byte) {
		if err := view.Update(topic, p); err != nil {
			t.Errorf("the device published a malformed status: %v", err)
		}
	}); err != nil {
		t.Fatal(err)
	}

	d := newEmuDevice(t, "arm1176", bins.agent, b.URL())
	kr := protocol.NewKeyring(d.pub)
	publish := func(path string, o fleet.PublishOptions) {
		t.Helper()
		o.Keyring = kr
		if _, err := fleet.PublishBundle(ctx, publisher, path, o); err != nil {
			t.Fatal(err)
		}
	}
	report := func() (protocol.DeviceStatus, protocol.AppReport) {
		for _, s := range view.Devices() {
			if s.Device == d.id {
				for _, a := range s.Apps {
					if a.App == "hello" {
						return s, a
					}
				}
				return s, protocol.AppReport{}
			}
		}
		return protocol.DeviceStatus{}, protocol.AppReport{}
	}
	lastReport := func() string {
		s, _ := report()
		j, _ := json.MarshalIndent(s, "", "  ")
		return string(j)
	}

	// The device: the daemon on an emulated ARMv6 core.
	dm := d.startDaemon()
	waitFor(t, "the emulated device to report online", func() bool {
		s, _ := report()
		return s.Online
	}, lastReport)
	if s, _ := report(); !strings.Contains(s.CPU, "armv6") {
		t.Fatalf("the device reports CPU %q, want the emulated armv6 core", s.CPU)
	}
	online := time.Now()

	// hello 1.0.0 for linux-armv7 and for linux-armv6 on the same channel.
	publish(d.bundle("1.0.0", 1, "7", bins.hello7v1), fleet.PublishOptions{Channel: "stable"})
	publish(d.bundle("1.0.0", 1, "6", bins.hello6v1), fleet.PublishOptions{Channel: "stable"})
	waitFor(t, "hello 1.0.0 committed in the device's retained status", func() bool {
		_, a := report()
		return a.Version == "1.0.0" && a.State == agent.StateCommitted
	}, lastReport)
	committed := time.Now()
	s, a := report()
	if s.Profile != "linux-armv6" || a.Sequence != 1 || a.LastError != "" {
		t.Fatalf("after the install: profile %q, report %+v", s.Profile, a)
	}
	if fileHash(t, d.hello) != fileHash(t, bins.hello6v1) {
		t.Fatal("the device installed a binary other than the armv6 hello")
	}
	if !view.Converged("hello", "1.0.0", 1, agent.StateCommitted) {
		t.Fatalf("the fleet view has not converged on hello 1.0.0:\n%s", lastReport())
	}
	// The field engineer's view of the same device.
	d.waitApp("hello 1.0.0 running under the daemon", "hello", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "1.0.0") })
	st := d.statusJSON()
	ha := app(st, "hello")
	if ha.Process == nil || !ha.Process.Running {
		t.Fatalf("status --json shows hello not running: %+v", ha.Process)
	}
	assertEmulatedChild(t, ha.Process.PID, "arm1176")
	if !st.Daemon || st.DeviceID != d.id || ha.Version != "1.0.0" || ha.Sequence != 1 || ha.State != agent.StateCommitted ||
		!hasEvent(ha.History, "committed") || ha.Process == nil || !ha.Process.Running {
		j, _ := json.MarshalIndent(st, "", "  ")
		t.Fatalf("status --json after the install:\n%s", j)
	}

	// hello 2.0.0 for linux-armv7 only; the operator retires 1.0.0, so the
	// channel offers nothing an ARMv6 core runs.
	v7 := d.bundle("2.0.0", 2, "7", bins.hello7v2)
	publish(v7, fleet.PublishOptions{Channel: "stable"})
	if _, err := fleet.Retire(ctx, publisher, "hello", "1.0.0", t.Logf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the device to say that nothing published runs on it", func() bool {
		_, a := report()
		return containsAll(a.Note, "linux-armv7", "GOARM=7", "VFPv3")
	}, lastReport)
	_, a = report()
	t.Logf("channel with only linux-armv7: %s", a.Note)
	// A note, not a failure: the device runs 1.0.0 and nothing on the
	// channel is for it (issue 7, item 1).
	if a.Version != "1.0.0" || a.State != agent.StateCommitted || fleet.Failed(a) {
		t.Fatalf("after the armv7-only channel: %+v", a)
	}

	// hello 2.0.0 (linux-armv7) assigned to this device: refused before a
	// chunk is fetched, with the reason in both views.
	publish(v7, fleet.PublishOptions{Device: d.id})
	waitFor(t, "the device to refuse the assigned armv7 release", func() bool {
		_, a := report()
		return containsAll(a.LastError, "hello 2.0.0 refused", "GOARM=7", "VFPv3")
	}, lastReport)
	refused := time.Now()
	_, a = report()
	t.Logf("assigned linux-armv7 release: %s", a.LastError)
	if a.Version != "1.0.0" || a.Sequence != 1 || a.State != agent.StateCommitted {
		t.Fatalf("after the refusal: %+v", a)
	}
	st = d.statusJSON()
	ha = app(st, "hello")
	if ha.Version != "1.0.0" || ha.State != agent.StateCommitted || !containsAll(ha.LastError, "2.0.0", "GOARM=7", "VFPv3") || !hasEvent(ha.History, "refused") {
		j, _ := json.MarshalIndent(st, "", "  ")
		t.Fatalf("status --json after the refusal:\n%s", j)
	}
	if !runningVersion(st, "hello", "1.0.0") || fileHash(t, d.hello) != fileHash(t, bins.hello6v1) {
		t.Fatal("the refusal changed the running app or its binary")
	}

	// Memory of the emulated daemon, as the host sees it: qemu-user maps
	// the guest into its own process, so VmHWM is the guest's memory plus
	// the emulator's. The emulated hello (a tiny Go program) is the
	// emulator's baseline.
	t.Logf("emulated daemon (qemu-arm process): %s; emulated hello --serve for comparison: %s",
		vmHWM(dm.cmd.Process.Pid), vmHWM(app(st, "hello").Process.PID))
	if err := dm.stop(); err != nil {
		t.Fatalf("the daemon's exit after SIGTERM: %v", err)
	}
	waitFor(t, "the device's will (offline) in its retained status", func() bool {
		s, _ := report()
		return !s.Online
	}, lastReport)
	t.Logf("timings: builds %s, daemon online %s, 1.0.0 committed %s later, refusals %s later; total %s",
		built.Sub(start).Round(time.Millisecond), online.Sub(built).Round(time.Millisecond),
		committed.Sub(online).Round(time.Millisecond), refused.Sub(committed).Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
}
