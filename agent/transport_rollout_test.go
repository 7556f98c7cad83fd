package agent

// Staged rollouts on the device (SPEC.md §8.8) against the real embedded
// broker, with in-process daemons. The rollout control messages and
// candidate envelopes are published here with protocol types, as the
// driver would.

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// testRollout is a valid running rollout of hello on stable for the
// release m, at cut.
func testRollout(id string, m *protocol.Manifest, cut uint64, state string, sel protocol.Selector) *protocol.Rollout {
	now := time.Now().UTC()
	return &protocol.Rollout{Schema: protocol.MQTTSchemaVersion, ID: id, Channel: "stable", App: m.App, Version: m.Version,
		Sequence: m.Sequence, Profiles: []string{m.Profile}, Select: sel, Waves: []protocol.Wave{{Percent: 100}},
		MaxFailures: 0.1, MinExecuted: 1, State: state, Cut: cut, Cuts: []uint64{cut}, WaveStarted: []time.Time{now},
		Created: now, Updated: now}
}

func publishRollout(t *testing.T, c paho.Client, ro *protocol.Rollout) {
	t.Helper()
	b, err := ro.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := protocol.RolloutTopic(ro.Channel, ro.App)
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(tp, 1, true, b); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatalf("publish rollout: %v", tok.Error())
	}
}

// publishCandidate publishes the bundle's envelope on the stable
// channel's candidate topic for its profile, and the chunks for which
// keep(i) holds (nil: all).
func publishCandidate(t *testing.T, c paho.Client, k *kit, path string, keep func(i int) bool) *protocol.Manifest {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, protocol.NewKeyring(k.pub))
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.MarshalEnvelope(b.RawManifest, b.RawSignature)
	if err != nil {
		t.Fatal(err)
	}
	m, chunks := bundleChunks(t, k, path)
	for i := range chunks {
		if keep == nil || keep(i) {
			publishChunk(t, c, m, i, chunks[i])
		}
	}
	tp, err := protocol.CandidateTopic("stable", m.App, m.Profile)
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(tp, 1, true, env); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatalf("publish candidate: %v", tok.Error())
	}
	return m
}

// deviceID finds a device id prefix-N whose MemberHash in rollout id
// satisfies want (membership known in advance).
func deviceID(t *testing.T, rollout, prefix string, want func(h uint64) bool) string {
	for i := 0; i < 10000; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if want(protocol.MemberHash(rollout, id)) {
			return id
		}
	}
	t.Fatalf("no device id %s-N found", prefix)
	return ""
}

func deviceStatus(view *fleet.FleetView, id string) protocol.DeviceStatus {
	for _, d := range view.Devices() {
		if d.Device == id {
			return d
		}
	}
	return protocol.DeviceStatus{}
}

func phaseOf(view *fleet.FleetView, id string) *protocol.RolloutReport {
	return deviceApp(view, id).Rollout
}

// rolloutMembersOnly: a member (inside the cut, labels matching the
// selector) takes the candidate and reports done; a device outside the
// cut and one excluded by its labels stay on the channel's release,
// fetch nothing, and report no rollout. Every status carries the
// device's channel and labels.
func rolloutMembersOnly(t *testing.T, url string) {
	const rid = "hello-2-members"
	cut := protocol.FullCut / 2
	in := deviceID(t, rid, "pi-in", func(h uint64) bool { return h < cut })
	out := deviceID(t, rid, "pi-out", func(h uint64) bool { return h >= cut })
	other := deviceID(t, rid, "pi-paris", func(h uint64) bool { return h < cut })

	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	op := operator(t, url)
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	devs := map[string]*mqttDevice{}
	for id, site := range map[string]string{in: "berlin", out: "berlin", other: "paris"} {
		cfg := mqttConfig(t, k, id, url)
		cfg.Labels = protocol.Labels{"site": site, "hw": "rev2"}
		devs[id] = startMQTTDevice(t, cfg)
		defer devs[id].stop()
	}
	for id, d := range devs {
		eventually(t, id+" commits 1.0.0", func() bool { return installedIs(d, "1.0.0", StateCommitted) })
	}
	n1 := int64(chunkCount(t, k, v1))

	m := publishCandidate(t, op, k, v2, nil)
	publishRollout(t, op, testRollout(rid, m, cut, protocol.RolloutRunning, protocol.Selector{"site": "berlin"}))
	eventually(t, "the member commits the candidate and reports done", func() bool {
		p := phaseOf(view, in)
		return installedIs(devs[in], "2.0.0", StateCommitted) && p != nil && p.ID == rid && p.Phase == protocol.PhaseDone
	})
	time.Sleep(time.Second) // the others had the same messages; let them act on them
	for _, id := range []string{out, other} {
		if !installedIs(devs[id], "1.0.0", StateCommitted) {
			t.Errorf("%s (not a member) left 1.0.0", id)
		}
		if got := devs[id].stats().ChunksReceived.Load(); got != n1 {
			t.Errorf("%s (not a member) received %d chunks, want only 1.0.0's %d", id, got, n1)
		}
		if p := phaseOf(view, id); p != nil {
			t.Errorf("%s is not a member but reports %+v", id, p)
		}
	}
	for id, site := range map[string]string{in: "berlin", out: "berlin", other: "paris"} {
		s := deviceStatus(view, id)
		if s.Channel != "stable" || s.Labels["site"] != site || s.Labels["hw"] != "rev2" {
			t.Errorf("%s reports channel %q labels %v", id, s.Channel, s.Labels)
		}
	}
}

// TestRolloutPausedAbandonsAndDoesNotStart: a member downloads the
// candidate (half of its chunks are on the broker); the rollout is
// paused: the download is abandoned, and the member does not start again
// when the chunks are all there. Resumed, it installs and reports done.
// A malformed control message in between is dropped and changes nothing.
func TestRolloutPausedAbandonsAndDoesNotStart(t *testing.T) {
	shortStall(t)
	const rid = "hello-2-pause"
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2, Encoding: protocol.EncodingNone})
	_, chunks := bundleChunks(t, k, v2)
	n := len(chunks)
	if n < 4 {
		t.Fatalf("test bundle has %d chunks, want at least 4", n)
	}
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "pi-pause", b.URL()))
	defer dev.stop()
	eventually(t, "the device commits 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	n1 := dev.stats().ChunksReceived.Load()

	m := publishCandidate(t, op, k, v2, func(i int) bool { return i < n/2 })
	publishRollout(t, op, testRollout(rid, m, protocol.FullCut, protocol.RolloutRunning, nil))
	eventually(t, "the member downloads what the broker holds of the candidate", func() bool {
		a := deviceApp(view, "pi-pause")
		return dev.stats().ChunksReceived.Load() == n1+int64(n/2) && a.Target == "2.0.0" && a.Rollout != nil && a.Rollout.Phase == protocol.PhasePending
	})

	// Garbage on the rollout topic: dropped, logged.
	tp, _ := protocol.RolloutTopic("stable", "hello")
	if tok := op.Publish(tp, 1, true, []byte(`{"schema":1,"id":"x","state":"running"}`)); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	eventually(t, "the bad control message is dropped and logged", func() bool {
		return strings.Contains(log.String(), "dropped the rollout message on "+tp)
	})

	publishRollout(t, op, testRollout(rid, m, protocol.FullCut, protocol.RolloutPaused, nil))
	eventually(t, "the paused member abandons the download", func() bool {
		a := deviceApp(view, "pi-pause")
		return strings.Contains(log.String(), "abandoning the download of 2.0.0") && a.Target == "" && a.Rollout != nil && a.Rollout.Phase == protocol.PhasePending
	})
	for i := n / 2; i < n; i++ {
		publishChunk(t, op, m, i, chunks[i])
	}
	publishCandidate(t, op, k, v2, func(int) bool { return false }) // delivered again
	time.Sleep(1500 * time.Millisecond)
	if !installedIs(dev, "1.0.0", StateCommitted) || dev.stats().ChunksReceived.Load() != n1+int64(n/2) {
		t.Fatalf("a member of a paused rollout started the candidate (%d chunks)", dev.stats().ChunksReceived.Load()-n1)
	}
	rec, err := dev.a.loadDownload("hello")
	if err != nil || rec != nil {
		t.Errorf("the abandoned download is still recorded: %+v %v", rec, err)
	}

	publishRollout(t, op, testRollout(rid, m, protocol.FullCut, protocol.RolloutRunning, nil))
	eventually(t, "resumed, the member installs the candidate and reports done", func() bool {
		p := phaseOf(view, "pi-pause")
		return installedIs(dev, "2.0.0", StateCommitted) && p != nil && p.Phase == protocol.PhaseDone
	})
}

// TestRolloutFailedHealthCheckSurvivesRestart: the candidate fails its
// health check on trial and is rolled back; the member reports failed
// with the reason, and again after the agent restarts (from the state
// database), without fetching the candidate again.
func TestRolloutFailedHealthCheckSurvivesRestart(t *testing.T) {
	const rid = "hello-2-bad"
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	bad := k.bundle(spec{Version: "2.0.0", Sequence: 2, Extra: "-X main.healthFail=1"})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	cfg := mqttConfig(t, k, "pi-bad", b.URL())
	cfg.Apps[0].Health.Command = []string{cfg.Apps[0].Path, "--health"}
	dev := startMQTTDevice(t, cfg)
	eventually(t, "the device commits 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })

	m := publishCandidate(t, op, k, bad, nil)
	publishRollout(t, op, testRollout(rid, m, protocol.FullCut, protocol.RolloutRunning, nil))
	const why = "hello 2.0.0 failed its health check on trial"
	eventually(t, "the member rolls back and reports failed with the reason", func() bool {
		p := phaseOf(view, "pi-bad")
		return installedIs(dev, "1.0.0", StateRolledBack) && p != nil && p.Phase == protocol.PhaseFailed && strings.HasPrefix(p.Error, why)
	})
	chunksBefore := dev.stats().ChunksReceived.Load()
	dev.stop()

	restarted := time.Now().UTC()
	dev = startMQTTDevice(t, cfg)
	defer dev.stop()
	eventually(t, "after a restart the member still reports failed with the reason", func() bool {
		s := deviceStatus(view, "pi-bad")
		p := phaseOf(view, "pi-bad")
		return s.Time.After(restarted) && p != nil && p.Phase == protocol.PhaseFailed && strings.HasPrefix(p.Error, why)
	})
	time.Sleep(time.Second)
	if got := dev.stats().ChunksReceived.Load(); got != 0 {
		t.Errorf("the restarted agent fetched %d chunks of the candidate it rolled back (before the restart: %d)", got, chunksBefore)
	}
	if p := phaseOf(view, "pi-bad"); p == nil || p.Phase != protocol.PhaseFailed {
		t.Errorf("the phase changed to %+v", p)
	}
}

// moveClock makes the maintenance-window clock run at offset from now.
func moveClock(t *testing.T) *atomic.Int64 {
	var off atomic.Int64
	old := mqttClock
	mqttClock = func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
	t.Cleanup(func() { mqttClock = old })
	return &off
}

// TestRolloutWindow: a device outside its maintenance window downloads a
// channel release but does not install it; its status says when the
// window opens. When the window opens it installs. Then a rollout's
// candidate: the member downloads it, reports waiting with the next
// opening, and installs when the window opens again.
func TestRolloutWindow(t *testing.T) {
	off := moveClock(t)
	now := time.Now().UTC()
	start := now.Add(2 * time.Hour).Truncate(time.Minute)
	end := start.Add(time.Hour)
	k := newKit(t)
	v0 := k.bundle(spec{Version: "0.9.0", Sequence: 1})
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 2})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 3})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	cfg := mqttConfig(t, k, "pi-window", b.URL())
	cfg.Maintenance = &MaintenanceConfig{Window: start.Format("15:04") + "-" + end.Format("15:04"), Timezone: "+00:00"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	dev, log := startMQTTDeviceLogged(t, cfg)
	defer dev.stop()
	// Nothing runs on the device yet: its first install interrupts no
	// service and does not wait for the window.
	publish(t, op, k, v0, "")
	eventually(t, "the new device installs 0.9.0 at once, outside its window", func() bool { return installedIs(dev, "0.9.0", StateCommitted) })
	publish(t, op, k, v1, "")
	eventually(t, "the device downloads 1.0.0 and says when its window opens", func() bool {
		a := deviceApp(view, "pi-window")
		return a.Target == "1.0.0" && a.WindowOpens != nil && a.WindowOpens.Equal(start) && a.Progress != nil && a.Progress.Done == a.Progress.Total
	})
	time.Sleep(time.Second)
	if a := deviceApp(view, "pi-window"); a.Version != "0.9.0" || a.State != StateCommitted || strings.Count(log.String(), "installs when the maintenance window opens") != 1 {
		t.Fatalf("outside its window the device installed (%+v) or did not log the wait once:\n%s", a, log)
	}

	off.Store(int64(start.Sub(now) + time.Minute)) // the window opens
	eventually(t, "inside the window the device installs 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	eventually(t, "window_opens is cleared", func() bool { return deviceApp(view, "pi-window").WindowOpens == nil })

	off.Store(int64(end.Sub(now) + time.Minute)) // after the window
	m := publishCandidate(t, op, k, v2, nil)
	publishRollout(t, op, testRollout("hello-2-window", m, protocol.FullCut, protocol.RolloutRunning, nil))
	next := start.Add(24 * time.Hour)
	eventually(t, "the member downloads the candidate and reports waiting", func() bool {
		a := deviceApp(view, "pi-window")
		return a.Rollout != nil && a.Rollout.Phase == protocol.PhaseWaiting && a.WindowOpens != nil && a.WindowOpens.Equal(next) && a.Target == "2.0.0"
	})
	if !installedIs(dev, "1.0.0", StateCommitted) {
		t.Fatal("the candidate installed outside the window")
	}
	off.Store(int64(next.Sub(now) + time.Minute))
	eventually(t, "the window opens: the member installs and reports done", func() bool {
		p := phaseOf(view, "pi-window")
		return installedIs(dev, "2.0.0", StateCommitted) && p != nil && p.Phase == protocol.PhaseDone
	})
}

// TestRolloutSkipped: members that cannot take part say why and are
// counted neither way: one has an assignment (it wins over rollouts), the
// other's CPU runs none of the candidates.
func TestRolloutSkipped(t *testing.T) {
	const rid = "hello-2-skipped"
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2arm := k.bundle(spec{Version: "2.0.0", Sequence: 2, Target: testkit.Target{GOARCH: "arm64"}})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	publish(t, op, k, v1, "pi-assigned")
	var devs []*mqttDevice
	for _, id := range []string{"pi-assigned", "pi-amd64"} {
		d := startMQTTDevice(t, mqttConfig(t, k, id, b.URL()))
		defer d.stop()
		devs = append(devs, d)
		eventually(t, id+" commits 1.0.0", func() bool { return installedIs(d, "1.0.0", StateCommitted) })
	}
	m := publishCandidate(t, op, k, v2arm, nil)
	publishRollout(t, op, testRollout(rid, m, protocol.FullCut, protocol.RolloutRunning, nil))
	eventually(t, "both members report skipped with their reasons", func() bool {
		a, o := phaseOf(view, "pi-assigned"), phaseOf(view, "pi-amd64")
		return a != nil && a.Phase == protocol.PhaseSkipped && strings.Contains(a.Error, "assignment wins") &&
			o != nil && o.Phase == protocol.PhaseSkipped && strings.Contains(o.Error, "linux-arm64")
	})
	for _, d := range devs {
		if !installedIs(d, "1.0.0", StateCommitted) {
			t.Errorf("a skipped member left 1.0.0")
		}
	}
	t.Logf("skipped: %q / %q", phaseOf(view, "pi-assigned").Error, phaseOf(view, "pi-amd64").Error)
}
