package fleet

import (
	"bytes"
	"context"
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

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// simFleet plays n devices on channel stable running hello 1.3.0: each
// publishes its retained status, and answers a rollout it is a member of
// with the phase done (or failed, for the devices in fail), as an agent
// with rollout support does.
type simFleet struct {
	c    paho.Client
	devs []string
	mu   sync.Mutex
	fail map[string]string
	seen map[string]bool
}

func newSimFleet(t testing.TB, url string, n int) *simFleet {
	t.Helper()
	f := &simFleet{c: connect(t, url, "", "", "sim-fleet"), fail: map[string]string{}, seen: map[string]bool{}}
	for i := range n {
		d := fmt.Sprintf("sim-%02d", i)
		f.devs = append(f.devs, d)
		f.publish(t, d, "", "")
	}
	return f
}

func (f *simFleet) publish(t testing.TB, dev, rolloutID, phase string) {
	a := protocol.AppReport{App: "hello", Version: "1.3.0", Sequence: 6, State: "committed"}
	if phase != "" {
		a.Rollout = &protocol.RolloutReport{ID: rolloutID, Phase: phase}
		if phase == protocol.PhaseFailed {
			a.Rollout.Error = f.fail[dev]
			a.State = "rolled-back"
		} else {
			a.Version, a.Sequence = "1.4.0", 7
		}
	}
	s := &protocol.DeviceStatus{Schema: 1, Device: dev, Channel: "stable", Online: true, Time: time.Now().UTC(), Apps: []protocol.AppReport{a}}
	b, err := s.Marshal()
	if err != nil {
		t.Error(err)
		return
	}
	topic, _ := protocol.StatusTopic(dev)
	tok := f.c.Publish(topic, 1, true, b)
	if phase == "" {
		tok.Wait() // the fleet exists before the test goes on
	}
}

// answer makes the fleet answer rollouts on channel stable.
func (f *simFleet) answer(t testing.TB) {
	ctrl, _ := protocol.RolloutTopic("stable", "hello")
	err := Subscribe(context.Background(), f.c, []string{ctrl}, func(_ string, payload []byte) {
		if len(payload) == 0 {
			return
		}
		r, err := protocol.ParseRollout(payload)
		if err != nil || r.State != protocol.RolloutRunning {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, d := range f.devs {
			if r.Member(d, nil) && !f.seen[r.ID+d] {
				f.seen[r.ID+d] = true
				phase := protocol.PhaseDone
				if f.fail[d] != "" {
					phase = protocol.PhaseFailed
				}
				f.publish(t, d, r.ID, phase)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// startTestRollout publishes a candidate for rel and a control message as
// `rollout start` does, over the devices given.
func startTestRollout(t testing.TB, c paho.Client, rel testRelease, id, waves string, bake time.Duration, devs []string) *protocol.Rollout {
	t.Helper()
	ctx := context.Background()
	if _, err := PublishBundle(ctx, c, rel.path, PublishOptions{Keyring: rel.kr, Channel: "stable", Candidate: true}); err != nil {
		t.Fatal(err)
	}
	w, err := protocol.ParseWaves(waves)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	r := &protocol.Rollout{Schema: 1, ID: id, Channel: "stable", App: rel.m.App, Version: rel.m.Version, Sequence: rel.m.Sequence,
		Profiles: []string{rel.m.Profile}, Waves: w, MaxFailures: 0.1, MinExecuted: 3, BakeSeconds: int64(bake / time.Second),
		DeviceTimeoutSeconds: 1800, State: protocol.RolloutRunning, Created: now, Updated: now, WaveStarted: []time.Time{now}, Revision: 1}
	r.Cut = WaveCut(id, devs, w, 0)
	r.Cuts = []uint64{r.Cut}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ctrl, _ := protocol.RolloutTopic("stable", rel.m.App)
	if err := wait(ctx, c.Publish(ctrl, 1, true, b), time.Minute); err != nil {
		t.Fatal(err)
	}
	return r
}

// watchRollout returns the latest control message and presence seen.
type watcher struct {
	mu       sync.Mutex
	r        *protocol.Rollout
	presence *protocol.DriverPresence
	changed  chan struct{}
}

func watch(t testing.TB, url string) *watcher {
	t.Helper()
	w := &watcher{changed: make(chan struct{}, 1)}
	c := connect(t, url, "", "", "")
	ctrl, _ := protocol.RolloutTopic("stable", "hello")
	if err := Subscribe(context.Background(), c, []string{ctrl, protocol.DriverTopic}, func(topic string, payload []byte) {
		w.mu.Lock()
		if topic == protocol.DriverTopic {
			w.presence, _ = protocol.ParseDriverPresence(payload)
		} else if r, err := protocol.ParseRollout(payload); err == nil {
			w.r = r
		}
		w.mu.Unlock()
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *watcher) get() (*protocol.Rollout, *protocol.DriverPresence) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.r, w.presence
}

// until waits for cond on the latest rollout message.
func (w *watcher) until(t testing.TB, what string, limit time.Duration, cond func(*protocol.Rollout, *protocol.DriverPresence) bool) *protocol.Rollout {
	t.Helper()
	deadline := time.After(limit)
	for {
		r, p := w.get()
		if cond(r, p) {
			return r
		}
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("waited %s for %s; last rollout %+v presence %+v", limit, what, r, p)
		}
	}
}

func runDriverAsync(t testing.TB, o DriverOptions) (ready chan struct{}, done chan error, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ready, done = make(chan struct{}), make(chan error, 1)
	var once sync.Once
	o.OnReady = func() { once.Do(func() { close(ready) }) }
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	go func() { done <- RunDriver(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	return ready, done, cancel
}

func TestDriverRolloutCompletes(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	f := newSimFleet(t, b.URL(), 8)
	f.answer(t)
	w := watch(t, b.URL())
	ready, _, _ := runDriverAsync(t, DriverOptions{Client: ClientOptions{Broker: b.URL()}})
	<-ready
	op := connect(t, b.URL(), "", "", "")
	rel := makeBundle(t, t.TempDir(), "hello", "1.4.0", 7, 20_000)
	startTestRollout(t, op, rel, "hello-7-0001", "1,50%,100%", 0, f.devs)
	r := w.until(t, "done", 30*time.Second, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
		return r != nil && r.State == protocol.RolloutDone
	})
	if r.Counts.Done != 8 || r.Counts.Selected != 8 || len(r.Cuts) != 3 || r.Cut != protocol.FullCut || r.Revision < 4 {
		t.Fatalf("done rollout: %+v", r)
	}
	snap, err := Snapshot(context.Background(), op, []string{protocol.AllReleasesFilter, protocol.AllRolloutsFilter})
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := protocol.ReleaseTopic("stable", "hello", rel.m.Profile)
	ct, _ := protocol.CandidateTopic("stable", "hello", rel.m.Profile)
	env, err := protocol.ParseEnvelope(snap[rt])
	if err != nil {
		t.Fatalf("the channel holds no promoted release: %v", err)
	}
	if m, err := env.Open(rel.kr); err != nil || m.Version != "1.4.0" {
		t.Fatalf("promoted release: %v %v", m, err)
	}
	if len(snap[ct]) != 0 {
		t.Fatalf("the candidate %s was not cleared after promotion", ct)
	}
}

func TestDriverHaltsAndOnlyOneDrives(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	f := newSimFleet(t, b.URL(), 6)
	w := watch(t, b.URL())
	ready, doneA, _ := runDriverAsync(t, DriverOptions{Client: ClientOptions{Broker: b.URL()}, Host: "host-a", PID: 4242})
	<-ready

	// A second instance refuses, naming the first and how to take over.
	err := RunDriver(context.Background(), DriverOptions{Client: ClientOptions{Broker: b.URL()}, Logf: t.Logf})
	if !errors.Is(err, ErrDriverOnline) || !strings.Contains(err.Error(), "host-a (pid 4242)") || !strings.Contains(err.Error(), "--take-over") {
		t.Fatalf("second driver: %v", err)
	}

	op := connect(t, b.URL(), "", "", "")
	rel := makeBundle(t, t.TempDir(), "hello", "1.4.0", 7, 20_000)
	w1, _ := protocol.ParseWaves("1,100%")
	canary := f.devs[0]
	for _, d := range f.devs {
		if WaveCut("hello-7-0002", f.devs, w1, 0) > protocol.MemberHash("hello-7-0002", d) {
			canary = d
		}
	}
	f.fail[canary] = "hello 1.4.0 failed its health check on trial: exit status 3"
	f.answer(t)
	startTestRollout(t, op, rel, "hello-7-0002", "1,100%", 0, f.devs)
	r := w.until(t, "halted", 30*time.Second, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
		return r != nil && r.State == protocol.RolloutHalted
	})
	want := "halted in wave 1: 1 of 1 devices failed (more than 10%): " + canary + ": hello 1.4.0 failed its health check on trial: exit status 3"
	if r.Reason != want || r.Counts.Members != 1 {
		t.Fatalf("halt: %q (members %d), want %q", r.Reason, r.Counts.Members, want)
	}

	// A take-over: the first instance stops, the presence names the new one.
	readyB, _, _ := runDriverAsync(t, DriverOptions{Client: ClientOptions{Broker: b.URL()}, TakeOver: true, Host: "host-b", Instance: "bbbb"})
	<-readyB
	select {
	case err := <-doneA:
		if !errors.Is(err, ErrDriverReplaced) {
			t.Fatalf("first driver after a take-over: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the first driver kept driving after a take-over")
	}
	w.until(t, "presence of the new driver", 10*time.Second, func(_ *protocol.Rollout, p *protocol.DriverPresence) bool {
		return p != nil && p.Instance == "bbbb" && p.Online
	})
}

func TestDriverInsideAuthenticatedBroker(t *testing.T) {
	dir := t.TempDir()
	users := writeUsers(t, dir, map[string][2]string{"op": {"operator-pass", RoleOperator}, "sim-00": {"device-pass", RoleDevice}})
	b := startEmbedded(t, BrokerOptions{DataDir: dir, Users: users})
	ready, _, _ := runDriverAsync(t, DriverOptions{Client: b.InternalClient(), StaleBefore: b.Started()})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("the broker's own driver did not start on a broker with a users file")
	}
	// The internal identity works only on the internal listener, and that
	// listener takes nobody else.
	ic := b.InternalClient()
	if c, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), Username: ic.Username, Password: ic.Password}); err == nil {
		c.Disconnect(0)
		t.Fatal("the internal identity logged in on the public listener")
	}
	if c, err := Connect(context.Background(), ClientOptions{Broker: ic.Broker, Username: "op", Password: "operator-pass"}); err == nil {
		c.Disconnect(0)
		t.Fatal("an operator logged in on the internal listener")
	}
	op := connect(t, b.URL(), "op", "operator-pass", "")
	snap, err := Snapshot(context.Background(), op, []string{protocol.DriverTopic})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := protocol.ParseDriverPresence(snap[protocol.DriverTopic]); err != nil || !p.Online {
		t.Fatalf("driver presence on the broker: %v %v", p, err)
	}
}

// TestDriverKilledResumes kills a real `edgefleet rollout drive` process
// with SIGKILL mid-rollout: nothing advances while it is gone, its will
// says it is gone, and a new process finishes the rollout.
func TestDriverKilledResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED in -short: builds the edgefleet command")
	}
	bin := filepath.Join(t.TempDir(), "edgefleet")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/edgefleet").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	f := newSimFleet(t, b.URL(), 10)
	f.answer(t)
	w := watch(t, b.URL())
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "rollout", "drive", "--broker", b.URL())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			t.Logf("driver output:\n%s", out.String())
		})
		return cmd
	}
	drv := start()
	w.until(t, "the driver online", 20*time.Second, func(_ *protocol.Rollout, p *protocol.DriverPresence) bool { return p != nil && p.Online })
	op := connect(t, b.URL(), "", "", "")
	rel := makeBundle(t, t.TempDir(), "hello", "1.4.0", 7, 20_000)
	startTestRollout(t, op, rel, "hello-7-0003", "1,50%,100%", 3*time.Second, f.devs)
	w.until(t, "wave 2 baking", 30*time.Second, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
		return r != nil && r.Wave == 1 && !r.BakeFrom.IsZero()
	})
	if err := drv.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.until(t, "the will saying the driver is gone", 20*time.Second, func(_ *protocol.Rollout, p *protocol.DriverPresence) bool { return p != nil && !p.Online })
	frozen, _ := w.get()
	time.Sleep(5 * time.Second) // longer than the bake: a driver would advance
	now, _ := w.get()
	if now.Revision != frozen.Revision || now.Wave != 1 || now.Cut != frozen.Cut || now.State != protocol.RolloutRunning {
		t.Fatalf("the rollout moved while no driver ran: %+v → %+v", frozen, now)
	}
	start()
	r := w.until(t, "done after the restart", 30*time.Second, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
		return r != nil && r.State == protocol.RolloutDone
	})
	if r.Counts.Done != 10 || len(r.Cuts) != 3 || r.Cuts[1] != frozen.Cuts[1] || r.Revision <= frozen.Revision {
		t.Fatalf("after the restart: %+v (frozen at %+v)", r, frozen)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatal(err)
	}
}

// TestDriverPromotionKeepsNewerRelease: a release published to the
// channel while the rollout bakes is newer than the candidate; promotion
// must not replace it (found by the wall-time benchmark: the channel went
// back to the rollout's release and the fleet never took the newer one).
func TestDriverPromotionKeepsNewerRelease(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	f := newSimFleet(t, b.URL(), 4)
	f.answer(t)
	w := watch(t, b.URL())
	ready, _, _ := runDriverAsync(t, DriverOptions{Client: ClientOptions{Broker: b.URL()}})
	<-ready
	op := connect(t, b.URL(), "", "", "")
	rel := makeBundle(t, t.TempDir(), "hello", "1.4.0", 7, 20_000)
	startTestRollout(t, op, rel, "hello-7-0002", "100%", 3*time.Second, f.devs)
	w.until(t, "the last wave bakes", 30*time.Second, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
		return r != nil && r.Counts.Done == 4 && r.State == protocol.RolloutRunning
	})
	newer := makeBundle(t, t.TempDir(), "hello", "1.5.0", 8, 20_000)
	if _, err := PublishBundle(context.Background(), op, newer.path, PublishOptions{Keyring: newer.kr, Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
	w.until(t, "done", 30*time.Second, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
		return r != nil && r.State == protocol.RolloutDone
	})
	rt, _ := protocol.ReleaseTopic("stable", "hello", rel.m.Profile)
	snap, err := Snapshot(context.Background(), op, []string{rt})
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.ParseEnvelope(snap[rt])
	if err != nil {
		t.Fatal(err)
	}
	if m, err := protocol.ParseManifest(env.Manifest); err != nil || m.Sequence != 8 {
		t.Fatalf("the channel holds %v (%v) after promotion, want the newer 1.5.0 (sequence 8)", m, err)
	}
}
