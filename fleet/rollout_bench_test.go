package fleet

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// BenchmarkRolloutStatuses is the driver's cost per device status with a
// fleet of 10,000 selected devices: strict parse and engine update, as
// the driver's loop does. Run it with -cpu 1 for one core.
func BenchmarkRolloutStatuses(b *testing.B) {
	const n = 10_000
	w, _ := protocol.ParseWaves("1,5%,25%,100%")
	devs := make([]string, n)
	for i := range devs {
		devs[i] = fmt.Sprintf("dev-%05d", i)
	}
	r := &protocol.Rollout{Schema: 1, ID: "hello-7-beef", Channel: "stable", App: "hello", Version: "1.4.0", Sequence: 7,
		Profiles: []string{"linux-arm64"}, Select: protocol.Selector{"hw": "rev2"}, Waves: w, MaxFailures: 1, MinExecuted: 3,
		BakeSeconds: 600, DeviceTimeoutSeconds: 1800, State: protocol.RolloutRunning, Wave: 2, Created: t0,
		WaveStarted: []time.Time{t0, t0, t0}}
	for i := range 3 {
		r.Cuts = append(r.Cuts, WaveCut(r.ID, devs, w, i))
	}
	r.Cut = r.Cuts[2]
	// Two statuses per device, alternating pending and done.
	raw := make([][]byte, 0, 2*n)
	for _, phase := range []string{protocol.PhasePending, protocol.PhaseDone} {
		for _, d := range devs {
			s := &protocol.DeviceStatus{Schema: 1, Device: d, Profile: "linux-arm64", CPU: "cortex-a53", AgentVersion: "0.9.0", Channel: "stable",
				Labels: protocol.Labels{"site": "berlin", "hw": "rev2"}, Time: t0, Online: true,
				Apps: []protocol.AppReport{{App: "hello", Version: "1.3.0", Sequence: 6, State: "committed",
					Rollout: &protocol.RolloutReport{ID: r.ID, Phase: phase}}}}
			bb, err := s.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			raw = append(raw, bb)
		}
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	e := NewRolloutEngine(r)
	for i := range n {
		s, _ := protocol.ParseStatus(raw[i])
		e.Update(s.Device, s, true, t0)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	heapPerDevice := float64(after.HeapInuse-before.HeapInuse) / n
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := protocol.ParseStatus(raw[i%len(raw)])
		if err != nil {
			b.Fatal(err)
		}
		e.Update(s.Device, s, true, t0)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "statuses/s")
	b.ReportMetric(heapPerDevice, "heap-B/device")
	if c := e.Counts(); c.Selected != n {
		b.Fatalf("selected %d", c.Selected)
	}
}

// BenchmarkHaltLatency is the time from publishing the status that
// crosses the failure threshold (a failing canary) to a subscriber
// seeing the halted control message, on the embedded broker with the
// driver running and 1,000 devices known.
func BenchmarkHaltLatency(b *testing.B) {
	br := startEmbedded(b, BrokerOptions{DataDir: b.TempDir()})
	f := newSimFleet(b, br.URL(), 1)
	// 999 more devices the driver tracks.
	for i := 1; i < 1000; i++ {
		d := fmt.Sprintf("sim-%04d", i)
		f.devs = append(f.devs, d)
		f.publish(b, d, "", "")
	}
	w := watch(b, br.URL())
	ready, _, _ := runDriverAsync(b, DriverOptions{Client: ClientOptions{Broker: br.URL()}, Logf: func(string, ...any) {}})
	<-ready
	op := connect(b, br.URL(), "", "", "")
	ctrl, _ := protocol.RolloutTopic("stable", "hello")
	waves, _ := protocol.ParseWaves("1,100%")
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("hello-7-%04d", i)
		now := time.Now().UTC()
		r := &protocol.Rollout{Schema: 1, ID: id, Channel: "stable", App: "hello", Version: "1.4.0", Sequence: 7,
			Profiles: []string{"linux-amd64"}, Waves: waves, MaxFailures: 0.1, MinExecuted: 3, BakeSeconds: 600,
			DeviceTimeoutSeconds: 1800, State: protocol.RolloutRunning, Created: now, Updated: now, WaveStarted: []time.Time{now}, Revision: 1}
		r.Cut = WaveCut(id, f.devs, waves, 0)
		r.Cuts = []uint64{r.Cut}
		var canary string
		for _, d := range f.devs {
			if protocol.InCut(id, d, r.Cut) {
				canary = d
			}
		}
		msg, _ := r.Marshal()
		wait(context.Background(), op.Publish(ctrl, 1, true, msg), time.Minute)
		w.until(b, "the driver adopting "+id, time.Minute, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
			return r != nil && r.ID == id && r.Driver != ""
		})
		f.fail[canary] = "hello 1.4.0 failed its health check on trial"
		b.StartTimer()
		f.publish(b, canary, id, protocol.PhaseFailed)
		w.until(b, "halted", time.Minute, func(r *protocol.Rollout, _ *protocol.DriverPresence) bool {
			return r != nil && r.ID == id && r.State == protocol.RolloutHalted
		})
		b.StopTimer()
		delete(f.fail, canary)
		f.publish(b, canary, "", "")
	}
}
