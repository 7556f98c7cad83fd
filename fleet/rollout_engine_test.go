package fleet

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// engineFleet is a rollout over n selected devices dev-000.. with its
// first wave's cut computed as `rollout start` does.
func engineFleet(t *testing.T, n int, waves string, maxFail float64, minExec int, mut func(*protocol.Rollout)) (*RolloutEngine, []string) {
	t.Helper()
	w, err := protocol.ParseWaves(waves)
	if err != nil {
		t.Fatal(err)
	}
	r := &protocol.Rollout{Schema: 1, ID: "hello-7-abcd", Channel: "stable", App: "hello", Version: "1.4.0", Sequence: 7,
		Profiles: []string{"linux-amd64"}, Waves: w, MaxFailures: maxFail, MinExecuted: minExec, BakeSeconds: 600,
		DeviceTimeoutSeconds: 1800, State: protocol.RolloutRunning, Created: t0, WaveStarted: []time.Time{t0}, Revision: 1}
	var devs []string
	for i := range n {
		devs = append(devs, fmt.Sprintf("dev-%03d", i))
	}
	if mut != nil {
		mut(r)
	}
	r.Cut = WaveCut(r.ID, devs, r.Waves, 0)
	r.Cuts = []uint64{r.Cut}
	e := NewRolloutEngine(r)
	for _, d := range devs {
		e.Update(d, status(d, "", ""), true, t0)
	}
	return e, devs
}

// status is a device on channel stable running hello 1.3.0 (sequence 6);
// phase "" reports no rollout phase.
func status(dev, phase, errText string) *protocol.DeviceStatus {
	a := protocol.AppReport{App: "hello", Version: "1.3.0", Sequence: 6, State: "committed"}
	if phase != "" {
		a.Rollout = &protocol.RolloutReport{ID: "hello-7-abcd", Phase: phase, Error: errText}
	}
	if phase == protocol.PhaseDone {
		a.Version, a.Sequence = "1.4.0", 7
	}
	return &protocol.DeviceStatus{Schema: 1, Device: dev, Channel: "stable", Online: true, Apps: []protocol.AppReport{a}}
}

func TestEngineSelection(t *testing.T) {
	e, devs := engineFleet(t, 3, "1,100%", 0.1, 1, func(r *protocol.Rollout) { r.Select = protocol.Selector{"site": "berlin"} })
	if c := e.Counts(); c.Selected != 0 {
		t.Fatalf("devices without the site label selected: %+v", c)
	}
	s := status(devs[0], "", "")
	s.Labels = protocol.Labels{"site": "berlin", "hw": "rev2"}
	e.Update(devs[0], s, true, t0)
	other := status(devs[1], "", "")
	other.Labels = protocol.Labels{"site": "paris"}
	e.Update(devs[1], other, true, t0)
	noApp := status(devs[2], "", "")
	noApp.Labels = protocol.Labels{"site": "berlin"}
	noApp.Apps = []protocol.AppReport{{App: "other"}}
	e.Update(devs[2], noApp, true, t0)
	if c := e.Counts(); c.Selected != 1 {
		t.Fatalf("selected %d, want only the berlin device running hello: %+v", c.Selected, c)
	}
	wrongChannel := status(devs[0], "", "")
	wrongChannel.Channel = "beta"
	wrongChannel.Labels = s.Labels
	e.Update(devs[0], wrongChannel, true, t0)
	if c := e.Counts(); c.Selected != 0 {
		t.Fatalf("a device that moved to channel beta is still selected: %+v", c)
	}
}

func TestEngineThresholdWithMinExecuted(t *testing.T) {
	// 20 devices, a first wave of 5: one failure among the first two
	// outcomes does not halt (min-executed 3), the third outcome makes
	// 1 of 3 > 20%.
	e, _ := engineFleet(t, 20, "5,100%", 0.2, 3, nil)
	m := e.Members()
	if len(m) != 5 {
		t.Fatalf("first wave holds %d devices, want 5", len(m))
	}
	e.Update(m[0], status(m[0], protocol.PhaseFailed, "hello 1.4.0 failed its health check on trial: exit status 3"), true, t0.Add(time.Minute))
	e.Update(m[1], status(m[1], protocol.PhaseDone, ""), true, t0.Add(time.Minute))
	if e.State() != protocol.RolloutRunning {
		t.Fatalf("halted with 2 outcomes, min-executed 3: %s", e.Rollout().Reason)
	}
	e.Update(m[2], status(m[2], protocol.PhaseDone, ""), true, t0.Add(2*time.Minute))
	r := e.Rollout()
	if r.State != protocol.RolloutHalted {
		t.Fatalf("1 of 3 failed with max 20%%: state %s (%s)", r.State, r.Reason)
	}
	want := "halted in wave 1: 1 of 3 devices failed (more than 20%): " + m[0] + ": hello 1.4.0 failed its health check on trial: exit status 3"
	if r.Reason != want {
		t.Fatalf("reason\n%q\nwant\n%q", r.Reason, want)
	}
	if r.Counts.Failed != 1 || r.Counts.Done != 2 || r.Counts.Pending != 2 || len(r.Failures) != 1 || r.Failures[0].Wave != 1 {
		t.Fatalf("counts %+v failures %+v", r.Counts, r.Failures)
	}
	// Frozen: more outcomes change counts, never the cut or state.
	cut := r.Cut
	e.Update(m[3], status(m[3], protocol.PhaseDone, ""), true, t0.Add(3*time.Minute))
	e.Tick(t0.Add(24 * time.Hour))
	if r := e.Rollout(); r.State != protocol.RolloutHalted || r.Cut != cut || r.Counts.Done != 3 {
		t.Fatalf("after halting: %s cut %d counts %+v", r.State, r.Cut, r.Counts)
	}
}

func TestEngineCanaryHaltsWhateverMinExecuted(t *testing.T) {
	e, _ := engineFleet(t, 10, "1,100%", 0.1, 5, nil)
	m := e.Members()
	if len(m) != 1 {
		t.Fatalf("canary wave holds %v", m)
	}
	e.Update(m[0], status(m[0], protocol.PhaseFailed, "rolled back: crash loop"), true, t0.Add(time.Minute))
	if r := e.Rollout(); r.State != protocol.RolloutHalted || !strings.Contains(r.Reason, "halted in wave 1: 1 of 1 devices failed") {
		t.Fatalf("a failing canary did not halt: %s %q", r.State, r.Reason)
	}
}

func TestEngineTimeouts(t *testing.T) {
	e, _ := engineFleet(t, 10, "2,100%", 0.5, 1, nil)
	m := e.Members()
	opens := t0.Add(2 * time.Hour)
	w := status(m[1], protocol.PhaseWaiting, "")
	w.Apps[0].WindowOpens = &opens
	e.Update(m[1], w, true, t0)
	e.Tick(t0.Add(29 * time.Minute))
	if c := e.Counts(); c.Failed != 0 || c.Pending != 1 || c.Waiting != 1 {
		t.Fatalf("before the timeout: %+v", c)
	}
	e.Tick(t0.Add(30 * time.Minute))
	r := e.Rollout()
	if r.Counts.Failed != 1 || r.Counts.Waiting != 1 || len(r.Failures) != 1 || r.Failures[0].Device != m[0] || r.Failures[0].Reason != "no report within 30m" {
		t.Fatalf("after 30m the silent member must fail and the waiting one not: %+v %+v", r.Counts, r.Failures)
	}
	// 1 failure of 1 outcome > 50%: halted; the waiting device never
	// counted.
	if r.State != protocol.RolloutHalted {
		t.Fatalf("state %s", r.State)
	}

	// The waiting device gets the timeout from its window's opening.
	e2, _ := engineFleet(t, 10, "1,100%", 0.5, 1, nil)
	m = e2.Members()
	w = status(m[0], protocol.PhaseWaiting, "")
	w.Apps[0].WindowOpens = &opens
	e2.Update(m[0], w, false, t0)
	e2.Tick(opens.Add(29 * time.Minute))
	if c := e2.Counts(); c.Failed != 0 || c.Waiting != 1 {
		t.Fatalf("a device waiting for its window timed out early: %+v", c)
	}
	e2.Tick(opens.Add(30 * time.Minute))
	if r := e2.Rollout(); r.Counts.Failed != 1 || !strings.Contains(r.Failures[0].Reason, "maintenance window") || !strings.Contains(r.Failures[0].Reason, "offline") {
		t.Fatalf("after its window + 30m: %+v %+v", r.Counts, r.Failures)
	}
}

func TestEnginePausedTimeDoesNotCount(t *testing.T) {
	e, _ := engineFleet(t, 10, "1,100%", 0.5, 1, nil)
	paused := *e.Rollout()
	paused.State, paused.Driver = protocol.RolloutPaused, ""
	if !e.Command(&paused, t0.Add(10*time.Minute)) {
		t.Fatal("pause refused")
	}
	e.Tick(t0.Add(5 * time.Hour))
	if c := e.Counts(); c.Failed != 0 {
		t.Fatalf("a member timed out while paused: %+v", c)
	}
	resumed := paused
	resumed.State, resumed.Resumed = protocol.RolloutRunning, t0.Add(5*time.Hour)
	if !e.Command(&resumed, t0.Add(5*time.Hour)) {
		t.Fatal("resume refused")
	}
	e.Tick(t0.Add(5*time.Hour + 29*time.Minute))
	if c := e.Counts(); c.Failed != 0 {
		t.Fatalf("timed out 29m after the resume: %+v", c)
	}
	e.Tick(t0.Add(5*time.Hour + 30*time.Minute))
	if r := e.Rollout(); r.State != protocol.RolloutHalted || r.Counts.Failed != 1 {
		t.Fatalf("30m after the resume: %s %+v", r.State, r.Counts)
	}
	// A halted rollout cannot be resumed by an operator.
	resumed.Revision = 99
	if e.Command(&resumed, t0.Add(6*time.Hour)) || e.State() != protocol.RolloutHalted {
		t.Fatal("a halted rollout resumed")
	}
}

func TestEngineBakeAdvanceAndPromote(t *testing.T) {
	e, devs := engineFleet(t, 20, "1,25%,100%", 0.1, 3, nil)
	done := func(now time.Time) {
		for _, d := range e.Members() {
			e.Update(d, status(d, protocol.PhaseDone, ""), true, now)
		}
	}
	var prev []string
	cuts := []uint64{}
	for wave, size := range []int{1, 5, 20} {
		m := e.Members()
		r := e.Rollout()
		if len(m) != size || r.Wave != wave {
			t.Fatalf("wave %d: %d members (want %d), rollout wave %d", wave, len(m), size, r.Wave)
		}
		for _, p := range prev {
			if !slices.Contains(m, p) {
				t.Fatalf("wave %d dropped member %s: cuts must only add devices", wave, p)
			}
		}
		cuts = append(cuts, r.Cut)
		prev = m
		start := t0.Add(time.Duration(wave) * time.Hour)
		done(start)
		r = e.Rollout()
		if !r.BakeFrom.Equal(start) {
			t.Fatalf("wave %d complete at %s: bake_from %s", wave, start, r.BakeFrom)
		}
		e.Tick(start.Add(9 * time.Minute))
		if e.Rollout().Wave != wave || e.ReadyToPromote() {
			t.Fatalf("wave %d advanced during its bake", wave)
		}
		e.Tick(start.Add(10 * time.Minute))
	}
	if !slices.IsSorted(cuts) || cuts[2] != protocol.FullCut {
		t.Fatalf("cuts %v: want growing, the last full", cuts)
	}
	if !e.ReadyToPromote() {
		t.Fatalf("every wave passed, not ready to promote: %+v", e.Rollout())
	}
	e.MarkDone("done", t0.Add(3*time.Hour))
	if r := e.Rollout(); r.State != protocol.RolloutDone || r.Counts.Done != len(devs) || len(r.Cuts) != 3 || len(r.WaveStarted) != 3 {
		t.Fatalf("done: %+v", r)
	}
}

func TestEngineSkippedAndCommittedSequence(t *testing.T) {
	e, _ := engineFleet(t, 10, "2,100%", 0.1, 1, nil)
	m := e.Members()
	e.Update(m[0], status(m[0], protocol.PhaseSkipped, "an assignment wins"), true, t0)
	// An agent without rollout support that already runs sequence 8.
	s := status(m[1], "", "")
	s.Apps[0].Sequence, s.Apps[0].Version = 8, "1.5.0"
	e.Update(m[1], s, true, t0)
	r := e.Rollout()
	if r.Counts.Skipped != 1 || r.Counts.Done != 1 || r.Counts.Failed != 0 || r.State != protocol.RolloutRunning || r.BakeFrom.IsZero() {
		t.Fatalf("a skipped and an already-newer member complete the wave without failing it: %+v %s", r.Counts, r.State)
	}
}

func TestEngineAdoptRebuildsFromMessage(t *testing.T) {
	e, devs := engineFleet(t, 20, "1,25%,100%", 0.1, 3, nil)
	canary := e.Members()
	for _, d := range canary {
		e.Update(d, status(d, protocol.PhaseDone, ""), true, t0)
	}
	e.Tick(t0.Add(10 * time.Minute))
	saved := e.Stamp("old", t0.Add(10*time.Minute))
	// A new driver instance starts from the retained message and the
	// statuses, in either order.
	e2 := NewRolloutEngine(saved)
	for _, d := range devs {
		ph := ""
		if slices.Contains(canary, d) {
			ph = protocol.PhaseDone
		}
		e2.Update(d, status(d, ph, ""), true, t0.Add(11*time.Minute))
	}
	a, b := e.Rollout(), e2.Rollout()
	if a.Wave != b.Wave || a.Cut != b.Cut || a.Counts != b.Counts || !slices.Equal(e.Members(), e2.Members()) {
		t.Fatalf("restarted engine differs:\n%+v\n%+v", a, b)
	}
}
