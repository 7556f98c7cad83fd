package main

// End-to-end staged rollouts (issue 8): 20 real edgefleet-agent processes
// with labels, the real broker (the embedded one through `edgefleet
// broker`, whose driver runs inside it, and Mosquitto with `edgefleet
// rollout drive`), and the operator CLI in process.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
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

// rfleet is a fleet of real agents on one broker, watched by an operator
// connection that remembers every version each device ever reported
// (installed or as a download target).
type rfleet struct {
	t       testing.TB
	url     string
	dir     string
	pubPath string
	priv    protocol.PrivateKey
	// rootPub, when set, configures the agents with root_keys (a key set
	// from the broker) instead of trusted_keys: pubPath.
	rootPub string
	bin     string
	op      paho.Client
	view    *fleet.FleetView

	mu      sync.Mutex
	agents  map[string]*exec.Cmd
	touched map[string]map[string]bool // device → versions reported as installed or target
}

func newRFleet(t testing.TB, url string) *rfleet {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("SKIPPED: real agents supervise apps on Linux only (this is %s)", runtime.GOOS)
	}
	if testing.Short() {
		t.Skip("SKIPPED (-short): 20 real agents")
	}
	f := &rfleet{t: t, url: url, dir: t.TempDir(), agents: map[string]*exec.Cmd{}, touched: map[string]map[string]bool{}}
	f.pubPath, f.priv = testkit.Keys(t, f.dir)
	f.bin = testkit.GoBuild(t, testkit.Build{Pkg: "cmd/edgefleet-agent", LDFlags: "-s -w -X main.version=0.0.1-test"})
	var err error
	testkit.Eventually(t, "the operator connects to "+url, func() bool {
		f.op, err = fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
		return err == nil
	})
	t.Cleanup(func() { f.op.Disconnect(100) })
	f.view = fleet.NewFleetView()
	if err := fleet.Subscribe(context.Background(), f.op, protocol.DeviceFilters, f.observe); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *rfleet) observe(topic string, payload []byte) {
	if f.view.Update(topic, payload) != nil {
		return
	}
	s, err := protocol.ParseStatus(payload)
	if err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.touched[s.Device] == nil {
		f.touched[s.Device] = map[string]bool{}
	}
	for _, a := range s.Apps {
		f.touched[s.Device][a.Version] = true
		if a.Target != "" {
			f.touched[s.Device][a.Target] = true
		}
	}
}

// touchedBy lists the devices that ever reported version.
func (f *rfleet) touchedBy(version string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for d, vs := range f.touched {
		if vs[version] {
			out = append(out, d)
		}
	}
	return out
}

// start runs a real agent for device id with labels.
func (f *rfleet) start(id string, labels map[string]string) {
	t := f.t
	dev := filepath.Join(f.dir, id)
	app := filepath.Join(dev, "opt", "hello")
	if err := os.MkdirAll(filepath.Dir(app), 0o755); err != nil {
		t.Fatal(err)
	}
	var lb strings.Builder
	for k, v := range labels {
		fmt.Fprintf(&lb, "  %s: %s\n", k, v)
	}
	trust := fmt.Sprintf("trusted_keys: [%q]", f.pubPath)
	if f.rootPub != "" {
		trust = fmt.Sprintf("root_keys: [%q]", f.rootPub)
	}
	cfg := fmt.Sprintf(`device_id: %s
data_dir: %s
%s
labels:
%sapps:
  - name: hello
    path: %q
    args: ["--serve"]
    health:
      window: 1s
      command: [%q, "--health"]
broker:
  url: %s
  channel: stable
`, id, filepath.Join(dev, "data"), trust, lb.String(), app, app, f.url)
	cfgPath := filepath.Join(dev, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(f.bin, "run", "--config", cfgPath)
	out := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.agents[id] = cmd
	f.mu.Unlock()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() && strings.HasSuffix(id, "00") {
			t.Logf("%s output:\n%s", id, out)
		}
	})
}

// kill SIGKILLs a device's agent (and its app): it goes silent.
func (f *rfleet) kill(id string) {
	f.mu.Lock()
	cmd := f.agents[id]
	f.mu.Unlock()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
}

// bundle packs hello at version/seq (healthFail: its health check fails).
func (f *rfleet) bundle(version string, seq uint64, healthFail bool) string {
	s := testkit.Spec{Version: version, Sequence: seq}
	if healthFail {
		s.Extra = "-X main.healthFail=1"
	}
	return testkit.BundleFile(f.t, f.dir, s, f.priv)
}

// cli runs an edgefleet command against the fleet's broker and requires
// exit code want.
func (f *rfleet) cli(want int, args ...string) string {
	f.t.Helper()
	code, out, errs := runCLI(f.t, args...)
	if code != want {
		f.t.Fatalf("edgefleet %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errs)
	}
	return out + errs
}

// rollout reads the retained control message of the stable hello rollout.
func (f *rfleet) rollout() *protocol.Rollout {
	topic, _ := protocol.RolloutTopic("stable", "hello")
	snap, err := fleet.Snapshot(context.Background(), f.op, []string{topic})
	if err != nil {
		f.t.Fatal(err)
	}
	if len(snap[topic]) == 0 {
		return nil
	}
	r, err := protocol.ParseRollout(snap[topic])
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

func (f *rfleet) waitRollout(what string, cond func(r *protocol.Rollout) bool) *protocol.Rollout {
	f.t.Helper()
	var r *protocol.Rollout
	testkit.Eventually(f.t, what, func() bool {
		r = f.rollout()
		return r != nil && cond(r)
	})
	return r
}

// count is how many devices run version in state.
func (f *rfleet) count(version, state string) int {
	n := 0
	for _, d := range f.view.Devices() {
		for _, a := range d.Apps {
			if a.App == "hello" && a.Version == version && a.State == state {
				n++
			}
		}
	}
	return n
}

const e2eDevices = 20

// startFleet starts e2eDevices agents, half site=berlin and half
// site=paris, and converges them on hello 1.0.0 with a plain publish.
func (f *rfleet) startFleet() {
	for i := 0; i < e2eDevices; i++ {
		site := "berlin"
		if i%2 == 1 {
			site = "paris"
		}
		f.start(fmt.Sprintf("dev-%02d", i), map[string]string{"site": site, "hw": "rev2"})
	}
	f.cli(0, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", f.bundle("1.0.0", 1, false))
	testkit.Eventually(f.t, "20 devices commit 1.0.0", func() bool {
		return f.view.Converged("hello", "1.0.0", e2eDevices, stateCommitted)
	})
}

// rolloutStory is the whole story on one broker: a good release through
// every wave, a bad one that halts after its first wave, pause and resume,
// abort, a label-selected rollout, and devices that go silent.
func rolloutStory(t *testing.T, f *rfleet) {
	f.startFleet()
	url := f.url

	// A good release goes through every wave; the fleet converges and the
	// channel holds it at the end.
	good := f.bundle("2.0.0", 2, false)
	out := f.cli(0, "rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable",
		"--waves", "1,25%,50%,100%", "--max-failures", "10%", "--min-executed", "2", "--bake", "1s", "--device-timeout", "2m", good)
	t.Logf("rollout start:\n%s", out)
	r := f.waitRollout("the good rollout is done", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutDone })
	if r.Counts.Done != e2eDevices || r.Counts.Failed != 0 {
		t.Fatalf("good rollout ended with counts %+v, want %d done", r.Counts, e2eDevices)
	}
	testkit.Eventually(t, "20 devices commit 2.0.0", func() bool { return f.view.Converged("hello", "2.0.0", e2eDevices, stateCommitted) })
	if len(r.WaveStarted) != 4 {
		t.Errorf("the good rollout started %d waves, want 4", len(r.WaveStarted))
	}
	st := f.cli(0, "rollout", "status", "--broker", url, r.ID)
	if !strings.Contains(st, "done") {
		t.Errorf("rollout status of a finished rollout does not say done:\n%s", st)
	}

	// A bad release (its health check fails) halts after the first wave
	// of 2; nobody else ever sees it.
	bad := f.bundle("3.0.0", 3, true)
	f.cli(0, "rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable",
		"--waves", "2,50%,100%", "--max-failures", "10%", "--min-executed", "2", "--bake", "1s", "--device-timeout", "2m", bad)
	r = f.waitRollout("the bad rollout halts", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutHalted })
	if r.Wave != 0 || r.Counts.Members != 2 || r.Counts.Failed != 2 {
		t.Fatalf("bad rollout halted in wave %d with counts %+v, want wave 0 (the first), 2 members, 2 failed", r.Wave, r.Counts)
	}
	if !strings.Contains(r.Reason, "halted in wave 1") || !strings.Contains(r.Reason, "2 of 2") || !strings.Contains(r.Reason, "health") {
		t.Errorf("halt reason %q does not say where, how many and why", r.Reason)
	}
	if strings.Contains(r.Reason, "last output") {
		t.Errorf("halt reason %q quotes the app's output: it should be one line to act on", r.Reason)
	}
	time.Sleep(3 * time.Second) // let any wrongly started device show itself
	if got := f.touchedBy("3.0.0"); len(got) != 2 {
		t.Fatalf("devices that saw the bad release: %v, want only the 2 of wave 1", got)
	}
	testkit.Eventually(t, "18 devices still run 2.0.0 and 2 rolled back to it", func() bool {
		return f.count("2.0.0", stateCommitted) == e2eDevices-2 && f.count("2.0.0", stateRolledBack) == 2
	})
	st = f.cli(0, "rollout", "status", "--broker", url, r.ID)
	if !strings.Contains(st, "halted in wave 1") || !strings.Contains(st, "sequence") {
		t.Errorf("rollout status of a halted rollout does not say why and what the fix is:\n%s", st)
	}
	f.cli(1, "rollout", "resume", "--broker", url, r.ID)

	// Pause right after the start: the cut stays at wave 1 while paused;
	// resume finishes it.
	v4 := f.bundle("4.0.0", 4, false)
	f.cli(0, "rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable",
		"--waves", "1,100%", "--max-failures", "10%", "--min-executed", "1", "--bake", "1s", "--device-timeout", "2m", v4)
	r = f.rollout()
	f.cli(0, "rollout", "pause", "--broker", url, r.ID)
	time.Sleep(4 * time.Second)
	if r = f.rollout(); r.State != protocol.RolloutPaused || r.Wave != 0 {
		t.Fatalf("paused rollout: state %s wave %d, want paused in wave 0", r.State, r.Wave)
	}
	if got := f.touchedBy("4.0.0"); len(got) > 1 {
		t.Fatalf("devices that saw 4.0.0 while the rollout paused in a wave of 1: %v", got)
	}
	f.cli(0, "rollout", "resume", "--broker", url, r.ID)
	f.waitRollout("the resumed rollout is done", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutDone })
	testkit.Eventually(t, "20 devices commit 4.0.0", func() bool { return f.view.Converged("hello", "4.0.0", e2eDevices, stateCommitted) })

	// Abort: candidates go, nobody outside the first wave sees 5.0.0.
	v5 := f.bundle("5.0.0", 5, false)
	f.cli(0, "rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable",
		"--waves", "1,100%", "--max-failures", "10%", "--bake", "30s", "--device-timeout", "2m", v5)
	r = f.waitRollout("the first wave of 5.0.0 is done", func(r *protocol.Rollout) bool { return r.Counts.Done == 1 })
	f.cli(0, "rollout", "abort", "--broker", url, r.ID)
	f.waitRollout("the rollout is aborted", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutAborted })
	time.Sleep(3 * time.Second)
	if got := f.touchedBy("5.0.0"); len(got) != 1 {
		t.Fatalf("devices that saw 5.0.0 of an aborted rollout with a wave of 1: %v", got)
	}

	// A label-selected rollout touches only site=berlin; a member that
	// goes silent mid-wave and one that never answers count as failed
	// after the device timeout, which here stays under the threshold.
	silent := "dev-00" // a berlin device
	f.kill(silent)     // never answers: known to the driver, gone before the start
	v6 := f.bundle("6.0.0", 6, false)
	f.cli(0, "rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable", "--select", "site=berlin",
		"--waves", "100%", "--max-failures", "30%", "--min-executed", "1", "--bake", "1s", "--device-timeout", "15s", v6)
	// Goes offline mid-wave: killed once it works on 6.0.0 (downloading,
	// installing or on its 1 s trial), before it can commit.
	midWave := "dev-02"
	testkit.Eventually(t, midWave+" works on 6.0.0", func() bool {
		for _, d := range f.view.Devices() {
			for _, a := range d.Apps {
				if d.Device == midWave && a.Rollout != nil && a.Rollout.Phase == protocol.PhasePending && (a.Target == "6.0.0" || a.Version == "6.0.0") {
					return a.State != stateCommitted
				}
			}
		}
		return false
	})
	f.kill(midWave)
	r = f.waitRollout("the berlin rollout is done", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutDone })
	if r.Counts.Selected != e2eDevices/2 || r.Counts.Failed != 2 || r.Counts.Done != e2eDevices/2-2 {
		t.Errorf("berlin rollout counts %+v, want %d selected, 2 failed (the silent device and the one gone mid-wave), the rest done", r.Counts, e2eDevices/2)
	}
	failed := map[string]string{}
	for _, fl := range r.Failures {
		failed[fl.Device] = fl.Reason
	}
	for _, d := range []string{silent, midWave} {
		if !strings.Contains(failed[d], "no report") {
			t.Errorf("failures %+v, want %s failed for no report within the timeout", r.Failures, d)
		}
	}
	for _, d := range f.touchedBy("6.0.0") {
		var n int
		fmt.Sscanf(d, "dev-%d", &n)
		if n%2 == 1 {
			t.Errorf("paris device %s saw the berlin-only release", d)
		}
	}
	// Bad input: each a clear error and nothing published.
	before := f.retained()
	for _, args := range [][]string{
		{"--waves", "5%,5%,100%"},
		{"--waves", "1,150%"},
		{"--waves", "1,100%", "--select", "site=tokyo"},
		{"--waves", "1,100%", "--max-failures", "120%"},
	} {
		a := append([]string{"rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable"}, args...)
		out := f.cli(1, append(a, f.bundle("7.0.0", 7, false))...)
		if len(strings.TrimSpace(out)) == 0 {
			t.Errorf("rollout start %v failed silently", args)
		}
	}
	// A sequence the broker holds for another build (6.0.0's rollout), and
	// one not newer than the channel's release (4.0.0 since its rollout).
	for _, b := range []string{f.bundle("6.0.1", 6, false), f.bundle("3.9.0", 3, false)} {
		if out := f.cli(1, "rollout", "start", "--broker", url, "--pub", f.pubPath, "--channel", "stable", "--waves", "1,100%", b); !strings.Contains(out, "--sequence 7") {
			t.Errorf("rollout start %s was not refused with the sequence to use:\n%s", filepath.Base(b), out)
		}
	}
	other, _ := testkit.Keys(t, t.TempDir())
	f.cli(1, "rollout", "start", "--broker", url, "--pub", other, "--channel", "stable", "--waves", "1,100%", f.bundle("7.0.0", 7, false))
	if after := f.retained(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a refused rollout start changed the broker's retained set:\nbefore %v\nafter  %v", before, after)
	}
}

// retained lists the retained topics under edgefleet/v1/ other than
// device messages.
func (f *rfleet) retained() []string {
	snap, err := fleet.Snapshot(context.Background(), f.op, []string{protocol.TopicPrefix + "release/#", protocol.TopicPrefix + "rollout/#", protocol.TopicPrefix + "chunks/#"})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for k := range snap {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// runInBackground runs an edgefleet command (broker, rollout drive) until
// the test ends.
func runInBackground(t testing.TB, args ...string) *testkit.Buffer {
	ctx, cancel := context.WithCancel(context.Background())
	out := &testkit.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, &cliEnv{stdin: strings.NewReader(""), stdout: out, stderr: out, getenv: func(string) string { return "" }}, args)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("edgefleet %s did not stop within 30s of its context", args[0])
		}
		if t.Failed() {
			t.Logf("edgefleet %s output:\n%s", strings.Join(args, " "), out)
		}
	})
	return out
}

// TestRolloutStoryEmbedded: the driver runs inside `edgefleet broker`.
func TestRolloutStoryEmbedded(t *testing.T) {
	port := testkit.FreePort(t)
	runInBackground(t, "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", t.TempDir())
	rolloutStory(t, newRFleet(t, fmt.Sprintf("tcp://127.0.0.1:%d", port)))
}

// TestRolloutStoryMosquitto: Mosquitto, and `edgefleet rollout drive`.
func TestRolloutStoryMosquitto(t *testing.T) {
	bin := testkit.MosquittoPath(t, "the Mosquitto rollout story")
	url := "tcp://" + testkit.StartMosquitto(t, bin, func(port int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nmax_packet_size 1114112\nmax_queued_messages 1000\n", port)
	})
	runInBackground(t, "rollout", "drive", "--broker", url)
	rolloutStory(t, newRFleet(t, url))
}

// BenchmarkRolloutWallTime compares, on one fleet of 20 real agents and
// the embedded broker, the wall time of a plain publish converging (twice,
// before and after) with a 4-wave rollout (1,25%,50%,100%) without bake
// and with a 2 s bake: the overhead of a rollout should be its waves and
// bakes, not the machinery. Run with -benchtime 1x (scripts/bench-rollout.sh).
func BenchmarkRolloutWallTime(b *testing.B) {
	port := testkit.FreePort(b)
	runInBackground(b, "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", b.TempDir())
	f := newRFleet(b, fmt.Sprintf("tcp://127.0.0.1:%d", port))
	f.startFleet()
	seq := uint64(1)
	converge := func(version string) time.Duration {
		t0 := time.Now()
		testkit.Eventually(b, "20 devices commit "+version, func() bool {
			return f.view.Converged("hello", version, e2eDevices, stateCommitted)
		})
		return time.Since(t0)
	}
	publish := func() time.Duration {
		seq++
		v := fmt.Sprintf("%d.0.0", seq)
		bundle := f.bundle(v, seq, false)
		t0 := time.Now()
		f.cli(0, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", bundle)
		converge(v)
		return time.Since(t0)
	}
	rollout := func(bake string) time.Duration {
		seq++
		v := fmt.Sprintf("%d.0.0", seq)
		bundle := f.bundle(v, seq, false)
		t0 := time.Now()
		f.cli(0, "rollout", "start", "--broker", f.url, "--pub", f.pubPath, "--channel", "stable", "--quiet",
			"--waves", "1,25%,50%,100%", "--max-failures", "10%", "--min-executed", "1", "--bake", bake, "--device-timeout", "2m", bundle)
		converge(v)
		return time.Since(t0)
	}
	b.ResetTimer()
	var pub, r0, r2 []time.Duration
	for i := 0; i < b.N; i++ {
		pub = append(pub, publish())
		r0 = append(r0, rollout("0s"))
		r2 = append(r2, rollout("2s"))
		pub = append(pub, publish())
	}
	b.StopTimer()
	med := func(d []time.Duration) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2].Seconds()
	}
	b.ReportMetric(med(pub), "publish-s")
	b.ReportMetric(med(r0), "rollout-bake0-s")
	b.ReportMetric(med(r2), "rollout-bake2s-s")
	b.ReportMetric(med(r0)/med(pub), "ratio-bake0")
	b.ReportMetric((med(r2)-med(r0))/3, "bake-cost-per-wave-s")
}
