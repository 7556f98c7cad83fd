package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

func deltaNote(view *fleet.FleetView, id string) string { return deviceApp(view, id).Delta }

// TestMQTTDeltas: real in-process agents on the embedded broker. Devices
// on v1 take v2 as a delta (a fraction of the bytes) and end with v2's
// exact executable; a device on v0 takes the full release (no delta from
// its executable); a device whose v1 binary was modified by hand gets the
// v1 delta, refuses it on its base check and falls back to the full
// release, saying so; the status view counts them.
func TestMQTTDeltas(t *testing.T) {
	k := newKit(t)
	v0 := k.bundle(spec{Version: "0.9.0", Sequence: 1})
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 2})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 3})
	d12 := deltaBundle(t, k, v1, v2, nil, 0)
	dm, _ := bundleChunks(t, k, d12)
	fm, want := bundleExe(t, k, v2)

	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	publish(t, op, k, v0, "dev-v0")
	ids := []string{"dev-v1a", "dev-v1b", "dev-mod", "dev-v0"}
	cfgs := map[string]*Config{}
	devs := map[string]*mqttDevice{}
	for _, id := range ids {
		cfgs[id] = mqttConfig(t, k, id, b.URL())
		devs[id] = startMQTTDevice(t, cfgs[id])
	}
	defer func() {
		for _, d := range devs {
			d.stop()
		}
	}()
	for _, id := range ids {
		v := "1.0.0"
		if id == "dev-v0" {
			v = "0.9.0"
		}
		eventually(t, id+" commits "+v, func() bool { return installedIs(devs[id], v, StateCommitted) })
	}
	// Modify dev-mod's binary by hand while its daemon runs (a copy with
	// bytes appended, renamed over it: the running app keeps its inode).
	// A daemon that starts later finds the change at recovery and takes the
	// full release without trying a delta; this one finds it only when the
	// delta's base check fails.
	path := cfgs["dev-mod"].Apps[0].Path
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".hand", append(orig, "patched by hand"...), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".hand", path); err != nil {
		t.Fatal(err)
	}

	before := map[string]int64{}
	for _, id := range ids {
		before[id] = devs[id].stats().ChunkBytes.Load()
	}
	publish(t, op, k, d12, "") // deltas first, then the release
	publish(t, op, k, v2, "")
	if err := fleet.Unassign(context.Background(), op, "dev-v0", "hello"); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		eventually(t, id+" commits 1.1.0", func() bool { return installedIs(devs[id], "1.1.0", StateCommitted) })
	}
	for _, id := range ids {
		got, err := os.ReadFile(cfgs[id].Apps[0].Path)
		if err != nil || string(got) != string(want) {
			t.Errorf("%s: the installed 1.1.0 differs from the full release's executable", id)
		}
		wire := devs[id].stats().ChunkBytes.Load() - before[id]
		t.Logf("%s: %d bytes on the wire for 1.1.0 (delta %d, full payload %d); status delta %q", id, wire, dm.Payload.Size, fm.Payload.Size, deltaNote(view, id))
		switch id {
		case "dev-v1a", "dev-v1b":
			if wire != dm.Payload.Size {
				t.Errorf("%s fetched %d bytes, want the delta's %d", id, wire, dm.Payload.Size)
			}
		case "dev-v0":
			if wire != fm.Payload.Size {
				t.Errorf("%s fetched %d bytes, want the full payload's %d", id, wire, fm.Payload.Size)
			}
		case "dev-mod":
			if wire != dm.Payload.Size+fm.Payload.Size {
				t.Errorf("%s fetched %d bytes, want the delta and then the full payload, %d", id, wire, dm.Payload.Size+fm.Payload.Size)
			}
		}
	}
	eventually(t, "the statuses say who took the delta", func() bool {
		return deltaNote(view, "dev-v1a") == protocol.DeltaUsed && deltaNote(view, "dev-v1b") == protocol.DeltaUsed &&
			deltaNote(view, "dev-v0") == "" && strings.HasPrefix(deltaNote(view, "dev-mod"), "fallback: ") &&
			strings.Contains(deltaNote(view, "dev-mod"), "modified, or another build")
	})
	s := view.Summary()
	if s.DeltaUsed != 2 || s.DeltaFallback != 1 || !strings.Contains(s.String(), "2 took a delta (1 fell back to the full release)") {
		t.Errorf("summary %+v: %s", s, s)
	}
	if e := deviceError(view, "dev-mod"); e != "" {
		t.Errorf("a delta fallback is not an error of the release: last_error %q", e)
	}
}

// TestMQTTCorruptDeltaChunk: the broker holds a corrupt copy of the
// delta's chunk. The device asks for it again like any chunk, and after
// mqttChunkTries bad copies takes the full release instead of pausing.
func TestMQTTCorruptDeltaChunk(t *testing.T) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 2})
	d12 := deltaBundle(t, k, v1, v2, nil, 0)
	dm, dchunks := bundleChunks(t, k, d12)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-c", b.URL()))
	defer dev.stop()
	eventually(t, "commits 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	publish(t, op, k, d12, "")
	publishChunk(t, op, dm, 0, corrupt(dchunks[0]))
	publish(t, op, k, v2, "")
	eventually(t, "commits 1.1.0", func() bool { return installedIs(dev, "1.1.0", StateCommitted) })
	if got := dev.stats().ChunksBad.Load(); got != int64(mqttChunkTries) {
		t.Errorf("the device received %d corrupt copies of the delta chunk, want %d (re-requested, then given up)", got, mqttChunkTries)
	}
	eventually(t, "the status says why the full release was taken", func() bool {
		return strings.Contains(deltaNote(view, "dev-c"), "fallback: chunk 0 of the delta from the broker does not match the signed hash 3 times")
	})
}

// TestMQTTRealAgentKilledMidDeltaApply: the real edgefleet-agent binary,
// on v1, dies (SIGKILL failpoint) half way through applying the delta to
// v2 it received over MQTT; restarted, it recovers to a complete v1,
// takes the delta again and commits v2.
func TestMQTTRealAgentKilledMidDeltaApply(t *testing.T) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 2})
	d12 := deltaBundle(t, k, v1, v2, nil, 0)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	bin := goBuild(t, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=0.0.1-test")
	cmd, out, cfgPath := realAgent(t, bin, k, "real-d", b.URL(), DeltaFailpoint)
	killAtCleanup(t, cmd, out, "real-d (armed)")
	eventually(t, "the armed agent commits 1.0.0 (a full release passes no delta failpoint)", func() bool {
		return view.Converged("hello", "1.0.0", 1, StateCommitted)
	})
	publish(t, op, k, d12, "")
	publish(t, op, k, v2, "")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(testkit.Hang):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		t.Fatalf("the armed agent did not reach %s within %s:\n%s", DeltaFailpoint, testkit.Hang, out)
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the armed agent did not die at %s: %v\n%s", DeltaFailpoint, err, out)
	}
	if !strings.Contains(out.String(), "as a delta from 1.0.0") {
		t.Fatalf("the agent did not take the delta before it died:\n%s", out)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // its app
	cmd2, out2 := startRealAgent(t, bin, cfgPath, "")
	killAtCleanup(t, cmd2, out2, "real-d")
	eventually(t, "the restarted agent commits 1.1.0", func() bool { return view.Converged("hello", "1.1.0", 1, StateCommitted) })
	eventually(t, "by the delta", func() bool { return deltaNote(view, "real-d") == protocol.DeltaUsed })
}

// TestMirrorServesDelta: the delta's chunks, exported by publish --mirror
// and listed in its envelope, come from the HTTP mirror like any chunks.
func TestMirrorServesDelta(t *testing.T) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "1.1.0", Sequence: 2})
	d12 := deltaBundle(t, k, v1, v2, nil, 0)
	mdir := t.TempDir()
	srv := httptest.NewServer(http.FileServer(http.Dir(mdir)))
	defer srv.Close()
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-m", b.URL()))
	defer dev.stop()
	eventually(t, "commits 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	before := dev.stats().MirrorChunks.Load()
	publishMirrored(t, op, k, d12, mdir, []string{srv.URL})
	publishMirrored(t, op, k, v2, mdir, []string{srv.URL})
	eventually(t, "commits 1.1.0 by the delta", func() bool {
		return installedIs(dev, "1.1.0", StateCommitted) && deltaNote(view, "dev-m") == protocol.DeltaUsed
	})
	if got := dev.stats().MirrorChunks.Load() - before; got != 1 {
		t.Errorf("%d chunks from the mirror for 1.1.0; want the delta's one chunk", got)
	}
}
