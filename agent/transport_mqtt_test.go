package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// mqttDevice is one in-process device: an Agent and its Daemon with the
// MQTT transport, connected to a real broker.
type mqttDevice struct {
	id     string
	cfg    *Config
	a      *Agent
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop stops the daemon and closes the agent; again, it does nothing.
func (d *mqttDevice) stop() {
	d.once.Do(func() {
		d.cancel()
		<-d.done
		d.a.Close()
	})
}

func (d *mqttDevice) stats() *MQTTStats {
	v, ok := mqttStatsHook.Load(d.id)
	if !ok {
		return &MQTTStats{}
	}
	return v.(*MQTTStats)
}

// mqttConfig is a device config trusting k's key, with app hello.
func mqttConfig(t testing.TB, k *kit, id, url string) *Config {
	dir := t.TempDir()
	cfg := &Config{
		DeviceID:    id,
		DataDir:     filepath.Join(dir, "data"),
		TrustedKeys: []string{filepath.Join(k.dir, "TEST-ONLY-release.pub")},
		Apps: []AppConfig{{Name: "hello", Path: filepath.Join(dir, "opt", "hello"), Args: []string{"--serve"},
			Health: HealthConfig{Window: Duration(time.Second), MaxBootsOnTrial: 2}}},
		Broker: &BrokerConfig{URL: url, Channel: "stable"},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startMQTTDevice(t testing.TB, cfg *Config) *mqttDevice {
	t.Helper()
	logf := func(f string, a ...any) { t.Logf(cfg.DeviceID+": "+f, a...) }
	a, err := Open(cfg, Options{Logf: logf})
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDaemon(cfg, a, DaemonOptions{Logf: logf, Version: "test", MinBackoff: 50 * time.Millisecond, StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dev := &mqttDevice{id: cfg.DeviceID, cfg: cfg, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { dev.done <- d.Run(ctx) }()
	return dev
}

// eventually polls cond until it holds; the deadline only bounds a hung
// test, it asserts nothing about speed.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, what, cond)
}

func startTestBroker(t testing.TB, data, listen string) *fleet.Broker {
	t.Helper()
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: listen, DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func operator(t testing.TB, url string) paho.Client {
	t.Helper()
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t testing.TB, c paho.Client, k *kit, path string, device string) {
	t.Helper()
	kr := protocol.NewKeyring(k.pub)
	o := fleet.PublishOptions{Keyring: kr, Channel: "stable"}
	if device != "" {
		o = fleet.PublishOptions{Keyring: kr, Device: device}
	}
	if _, err := fleet.PublishBundle(context.Background(), c, path, o); err != nil {
		t.Fatal(err)
	}
}

// fleetView follows the devices' retained statuses.
func fleetView(t testing.TB, c paho.Client) *fleet.FleetView {
	v := fleet.NewFleetView()
	if err := fleet.Subscribe(context.Background(), c, protocol.DeviceFilters, func(topic string, p []byte) {
		if err := v.Update(topic, p); err != nil {
			t.Errorf("a device published a malformed status: %v", err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

func installedIs(d *mqttDevice, version, state string) bool {
	sts, err := d.a.Status()
	if err != nil {
		return false
	}
	for _, s := range sts {
		if s.App == "hello" && s.Version == version && s.State == state {
			return true
		}
	}
	return false
}

// convergeFleet runs v1 → v2 → a v3 that crashes (rolled back to v2) on n
// in-process devices against the broker at url.
func convergeFleet(t *testing.T, url string, n int) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	v3 := k.bundle(spec{Version: "3.0.0", Sequence: 3, Extra: "-X main.crash=1"})
	op := operator(t, url)
	view := fleetView(t, op)

	var devs []*mqttDevice
	for i := 0; i < n; i++ {
		devs = append(devs, startMQTTDevice(t, mqttConfig(t, k, fmt.Sprintf("dev-%02d", i), url)))
	}
	defer func() {
		for _, d := range devs {
			d.stop()
		}
	}()
	for _, step := range []struct {
		path, version, state string
	}{{v1, "1.0.0", StateCommitted}, {v2, "2.0.0", StateCommitted}} {
		publish(t, op, k, step.path, "")
		for _, d := range devs {
			eventually(t, d.id+" commits "+step.version, func() bool { return installedIs(d, step.version, step.state) })
		}
		eventually(t, "the status view shows every device on "+step.version, func() bool {
			return view.Converged("hello", step.version, n, StateCommitted)
		})
	}
	publish(t, op, k, v3, "")
	for _, d := range devs {
		eventually(t, d.id+" rolls 3.0.0 back to 2.0.0", func() bool { return installedIs(d, "2.0.0", StateRolledBack) })
	}
	eventually(t, "the status view shows the rollback with its reason", func() bool {
		if !view.Converged("hello", "2.0.0", n, StateRolledBack) {
			return false
		}
		for _, d := range view.Devices() {
			if len(d.Apps) == 0 || d.Apps[0].LastError == "" {
				return false
			}
		}
		return true
	})
	// Anti-rollback floor: v3 stays retained but is not fetched again.
	for _, d := range devs {
		if got := d.stats().ChunksReceived.Load(); got > int64(3*chunkCount(t, k, v1)+2) {
			t.Errorf("%s received %d chunks for three releases", d.id, got)
		}
	}
}

func chunkCount(t testing.TB, k *kit, path string) int {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, protocol.NewKeyring(k.pub))
	if err != nil {
		t.Fatal(err)
	}
	return len(b.Manifest.Payload.Chunks)
}

// startPlainMosquitto runs mosquitto on a free loopback port, anonymous
// (the ACL matrix is tested in package fleet).
func startPlainMosquitto(t testing.TB) string {
	t.Helper()
	bin := testkit.MosquittoPath(t, "the Mosquitto fleet test")
	return "tcp://" + testkit.StartMosquitto(t, bin, func(port int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nmax_packet_size 1114112\nmax_queued_messages 1000\n", port)
	})
}

// TestMQTTBrokerRestartMidTransfer publishes only some chunks, lets the
// device fetch them, restarts the broker (same --data) and publishes the
// rest: the device converges and never fetches a chunk twice.
func TestMQTTBrokerRestartMidTransfer(t *testing.T) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Encoding: protocol.EncodingNone})
	data := t.TempDir()
	b := startTestBroker(t, data, "127.0.0.1:0")
	addr := b.Addr()
	op := operator(t, b.URL())

	f, _ := os.Open(v1)
	bun, err := protocol.OpenBundle(f, protocol.NewKeyring(k.pub))
	if err != nil {
		t.Fatal(err)
	}
	m := bun.Manifest
	n := len(m.Payload.Chunks)
	if n < 4 {
		t.Fatalf("test bundle has %d chunks, want at least 4", n)
	}
	pay, _ := bun.Payload()
	chunks := make([][]byte, n)
	for i := range chunks {
		chunks[i] = make([]byte, m.Payload.ChunkLen(i))
		if _, err := io_ReadFull(pay, chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	pubChunk := func(c paho.Client, i int) {
		tp, _ := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
		if tok := c.Publish(tp, 1, true, chunks[i]); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			t.Fatalf("publish chunk %d: %v", i, tok.Error())
		}
	}
	half := n / 2
	for i := 0; i < half; i++ {
		pubChunk(op, i)
	}
	env, _ := protocol.MarshalEnvelope(bun.RawManifest, bun.RawSignature)
	rt, _ := protocol.ReleaseTopic("stable", m.App, m.Profile)
	op.Publish(rt, 1, true, env).Wait()

	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-restart", b.URL()))
	defer dev.stop()
	eventually(t, "the device fetched the published half", func() bool { return dev.stats().ChunksReceived.Load() == int64(half) })

	op.Disconnect(100)
	b.Close()
	b2 := startTestBroker(t, data, addr) // same data, same address
	op2 := operator(t, b2.URL())
	for i := half; i < n; i++ {
		pubChunk(op2, i)
	}
	eventually(t, "the device installs and commits after the restart", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	if got := dev.stats().ChunksReceived.Load(); got != int64(n) {
		t.Fatalf("the device fetched %d chunks for a %d-chunk release across a broker restart; only the missing ones should be fetched", got, n)
	}
}

// TestMQTTIncompatibleRefused: a release only for a CPU this device cannot
// run is refused before a byte is fetched, and the reason is in its status.
func TestMQTTIncompatibleRefused(t *testing.T) {
	k := newKit(t)
	foreign := target{GOARCH: "arm", GOARM: "7"}
	if native.GOARCH == "arm" {
		foreign = target{GOARCH: "amd64"}
	}
	arm := k.bundle(spec{Version: "1.0.0", Sequence: 1, Target: foreign, NoProbe: true})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, arm, "")
	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-x86", b.URL()))
	defer dev.stop()
	lastErr := func() string {
		for _, d := range view.Devices() {
			for _, a := range d.Apps {
				if d.Device == "dev-x86" {
					return a.LastError
				}
			}
		}
		return ""
	}
	eventually(t, "the status notes that nothing published runs here", func() bool {
		return strings.Contains(deviceApp(view, "dev-x86").Note, "published profiles runs on this")
	})
	if e := lastErr(); e != "" {
		t.Errorf("nothing on the channel for this CPU is a note, not a failure: last_error %q", e)
	}
	// Assigned directly to the device: refused by the signed target, recorded.
	publish(t, op, k, arm, "dev-x86")
	eventually(t, "the assigned foreign release is refused with a reason", func() bool {
		return strings.Contains(lastErr(), "refused")
	})
	if got := dev.stats().ChunksReceived.Load(); got != 0 {
		t.Errorf("the device fetched %d chunks of a release it cannot run", got)
	}
}

// realAgent starts the real edgefleet-agent binary for a device id; the
// process group is killed at cleanup.
func realAgent(t testing.TB, bin string, k *kit, id, url, failpoint string) (*exec.Cmd, *syncBuffer, string) {
	t.Helper()
	return realAgentWith(t, bin, k, id, url, failpoint, "")
}

// realAgentWith is realAgent with extra lines of agent.yaml.
func realAgentWith(t testing.TB, bin string, k *kit, id, url, failpoint, extra string) (*exec.Cmd, *syncBuffer, string) {
	t.Helper()
	cfg := mqttConfig(t, k, id, url)
	cfgPath := filepath.Join(filepath.Dir(cfg.DataDir), "agent.yaml")
	yaml := fmt.Sprintf("device_id: %s\ndata_dir: %s\ntrusted_keys: [%s]\napps:\n  - name: hello\n    path: %s\n    args: [\"--serve\"]\n    health:\n      window: 1s\nbroker:\n  url: %s\n  channel: stable\n",
		cfg.DeviceID, cfg.DataDir, cfg.TrustedKeys[0], cfg.Apps[0].Path, url)
	yaml += extra
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, out := startRealAgent(t, bin, cfgPath, failpoint)
	return cmd, out, cfgPath
}

func startRealAgent(t testing.TB, bin, cfgPath, failpoint string) (*exec.Cmd, *syncBuffer) {
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), FailpointEnv+"="+failpoint)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

// killAtCleanup kills a real agent's process group when the test ends and,
// if the test failed, logs its output (out nil: not logged).
func killAtCleanup(t testing.TB, cmd *exec.Cmd, out *syncBuffer, name string) {
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() && out != nil {
			t.Logf("%s output:\n%s", name, out)
		}
	})
}

// syncBuffer is safe for concurrent writers and a reading test.
type syncBuffer = testkit.Buffer

// TestMQTTFiftyAgents: 50 real agent processes converge on one release.
// (Real processes, not in-process agents: many Agents in one process fork
// probes concurrently, and a child can inherit another agent's staged file
// descriptor open for writing, making that file briefly unexecutable.)
func TestMQTTFiftyAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 50 agents")
	}
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	bin := goBuild(t, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=0.0.1-test")
	publish(t, op, k, v1, "")
	for i := 0; i < 50; i++ {
		cmd, out, _ := realAgent(t, bin, k, fmt.Sprintf("pi-%03d", i), b.URL(), "")
		if i < 3 {
			killAtCleanup(t, cmd, out, fmt.Sprintf("pi-%03d", i))
		} else {
			killAtCleanup(t, cmd, nil, "")
		}
	}
	eventually(t, "50 devices commit 1.0.0", func() bool { return view.Converged("hello", "1.0.0", 50, StateCommitted) })
}

// realAgentKilledMidDownloadResumes runs the real edgefleet-agent
// binary: the first run dies (SIGKILL failpoint) right after recording its
// first chunk; the second run resumes and fetches only the rest.
func realAgentKilledMidDownloadResumes(t *testing.T, url string) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	n := chunkCount(t, k, v1)
	op := operator(t, url)
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	bin := goBuild(t, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=0.0.1-test")

	var procs []*exec.Cmd
	for i := 0; i < 2; i++ {
		id := fmt.Sprintf("real-%d", i)
		fp := ""
		if i == 0 {
			fp = "mqtt-after-chunk"
		}
		cmd, out, cfgPath := realAgent(t, bin, k, id, url, fp)
		if i == 0 {
			err := cmd.Wait()
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("the armed agent did not die at the failpoint: %v\n%s", err, out)
			}
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // its app, if any
			cmd, out = startRealAgent(t, bin, cfgPath, "")
		}
		procs = append(procs, cmd)
		killAtCleanup(t, cmd, out, id)
		if i == 0 {
			eventually(t, "the restarted agent resumes its download", func() bool {
				return strings.Contains(out.String(), fmt.Sprintf("%d chunks, 1 already here", n))
			})
		}
	}
	eventually(t, "both real agents commit 1.0.0", func() bool { return view.Converged("hello", "1.0.0", 2, StateCommitted) })
	for _, d := range view.Devices() {
		if d.AgentVersion != "0.0.1-test" || !d.Online {
			t.Errorf("status of %s: agent %q online %v", d.Device, d.AgentVersion, d.Online)
		}
	}
	// Stopping an agent publishes it offline.
	syscall.Kill(procs[1].Process.Pid, syscall.SIGTERM)
	eventually(t, "a stopped agent shows offline", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "real-1" {
				return !d.Online
			}
		}
		return false
	})
}

func io_ReadFull(r interface{ Read([]byte) (int, error) }, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			if n == len(b) {
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}

// The "connected" event can be dropped when the event buffer is full (the
// loop busy with an install during a reconnect). The device must still
// subscribe and publish its status: the loop follows paho's own view of
// the connection. Without that it stayed silent, shown offline by its
// last will, until the next reconnect.
func TestMQTTDroppedConnectedEvent(t *testing.T) {
	mqttDropEvent = func(kind string) bool { return kind == "connected" }
	t.Cleanup(func() { mqttDropEvent = nil })
	k := newKit(t)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, k.bundle(spec{Version: "1.0.0", Sequence: 1}), "")
	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-deaf", b.URL()))
	defer dev.stop()
	eventually(t, "the device reports online without its connected event", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "dev-deaf" && d.Online {
				return true
			}
		}
		return false
	})
	eventually(t, "and installs the retained release", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
}
