package agent

// Regression tests for issue 7's transport items: a device decides only on
// a complete view (1), every scheduled retry happens (2), missing chunks
// are reported (3), refusals are remembered by the signed manifest (4),
// liveness is apart from state (5), the release topics are read again
// (6), no log flood while the broker is away (7), and a download leaves
// data_dir room for the state files (10). Real brokers, real tmpfs
// mounts, real agent processes.

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
	"golang.org/x/sys/unix"
)

// shortStall makes the missing-chunk wait short for one test.
func shortStall(t *testing.T) {
	old := mqttStall
	mqttStall = 500 * time.Millisecond
	t.Cleanup(func() { mqttStall = old })
}

func freeBytes(t *testing.T, dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Frsize) // Frsize is int32 on 32-bit ARM
}

// fillTo writes a filler file so that about left bytes stay free in dir.
func fillTo(t *testing.T, dir string, left int64) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	n := freeBytes(t, dir) - left
	if n <= 0 {
		t.Fatalf("only %d bytes free in %s, want more than %d", freeBytes(t, dir), dir, left)
	}
	if err := os.WriteFile(p, make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// deviceApp is the first app report of device id in the view (zero when
// there is none yet).
func deviceApp(view *fleet.FleetView, id string) protocol.AppReport {
	for _, d := range view.Devices() {
		if d.Device == id && len(d.Apps) > 0 {
			return d.Apps[0]
		}
	}
	return protocol.AppReport{}
}

// TestMQTTMissingChunksReportedThenDiskFullRetried (items 2, 3, 10): the
// broker lacks half of the chunks; the device says which, in its status,
// and keeps asking. The chunks come back while data_dir (a real tmpfs) is
// full: the device pauses with a clear error instead of eating the space
// its state files need, retries on schedule, and installs when space is
// freed, fetching no chunk twice.
func TestMQTTMissingChunksReportedThenDiskFullRetried(t *testing.T) {
	shortRetries(t)
	shortStall(t)
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Encoding: protocol.EncodingNone})
	m, chunks := bundleChunks(t, k, v1)
	n := len(chunks)
	if n < 4 {
		t.Fatalf("test bundle has %d chunks, want at least 4", n)
	}
	fs := mountTmpfs(t, m.Payload.Size+mqttStateReserve+(4<<20))
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	for i := n / 2; i < n; i++ {
		publishChunk(t, op, m, i, nil) // withheld: the broker no longer holds them
	}
	cfg := mqttConfig(t, k, "dev-withheld", b.URL())
	cfg.DataDir = filepath.Join(fs, "data")
	dev, log := startMQTTDeviceLogged(t, cfg)
	defer dev.stop()

	eventually(t, "the status names the missing chunks and what to do", func() bool {
		a := deviceApp(view, "dev-withheld")
		return strings.Contains(a.LastError, "no chunk has arrived") && strings.Contains(a.LastError, "publish the release again") &&
			strings.Contains(a.LastError, "chunk "+strconv.Itoa(n/2))
	})
	if got := dev.stats().ChunksReceived.Load(); got != int64(n/2) {
		t.Fatalf("the device wrote %d chunks, want the %d the broker holds", got, n/2)
	}
	eventually(t, "the device keeps asking (with backoff)", func() bool {
		return strings.Count(log.String(), "no chunk has arrived") >= 2
	})

	// data_dir fills up (another program), then the chunks come back.
	filler := fillTo(t, fs, mqttStateReserve/2)
	for i := n / 2; i < n; i++ {
		publishChunk(t, op, m, i, chunks[i])
	}
	eventually(t, "the status says data_dir is full and that it retries", func() bool {
		a := deviceApp(view, "dev-withheld")
		return strings.Contains(a.LastError, "not enough space in data_dir") && strings.Contains(a.LastError, "retrying in")
	})
	eventually(t, "the scheduled retries happen", func() bool {
		return strings.Contains(log.String(), "(attempt 3; retrying in")
	})
	if free := freeBytes(t, fs); free < mqttStateReserve/4 {
		t.Errorf("the download left %d bytes free in data_dir; the state files need their reserve", free)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the device installs once space is free", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	if got := dev.stats().ChunksReceived.Load(); got != int64(n) {
		t.Errorf("the device wrote %d chunks for a %d-chunk release; retries must reuse the download", got, n)
	}
	eventually(t, "the error clears", func() bool {
		a := deviceApp(view, "dev-withheld")
		return a.Version == "1.0.0" && a.LastError == ""
	})
}

// TestMQTTDownloadChecksSpaceFirst (item 10): a release larger than what
// data_dir can hold beside the state reserve is not fetched at all; the
// status says so, and the download starts when space is freed.
func TestMQTTDownloadChecksSpaceFirst(t *testing.T) {
	shortRetries(t)
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Encoding: protocol.EncodingNone})
	m, _ := bundleChunks(t, k, v1)
	fs := mountTmpfs(t, m.Payload.Size+mqttStateReserve+(4<<20))
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	cfg := mqttConfig(t, k, "dev-space", b.URL())
	cfg.DataDir = filepath.Join(fs, "data")
	filler := fillTo(t, fs, m.Payload.Size/2+mqttStateReserve)
	dev, log := startMQTTDeviceLogged(t, cfg)
	defer dev.stop()
	eventually(t, "the status says data_dir lacks space for the download", func() bool {
		a := deviceApp(view, "dev-space")
		return strings.Contains(a.LastError, "not enough space in data_dir "+cfg.DataDir) && strings.Contains(a.LastError, "free some space there")
	})
	eventually(t, "it is retried", func() bool { return strings.Contains(log.String(), "(attempt 2; retrying in") })
	if got := dev.stats().ChunksReceived.Load(); got != 0 {
		t.Errorf("the device wrote %d chunks although the release does not fit", got)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the device installs once space is free", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
}

// statusHistory records every app report any device ever published.
type statusHistory struct {
	mu      sync.Mutex
	reports []protocol.AppReport
}

func watchStatuses(t *testing.T, url string) *statusHistory {
	h := &statusHistory{}
	c := operator(t, url)
	if err := fleet.Subscribe(context.Background(), c, []string{protocol.StatusFilter}, func(_ string, p []byte) {
		s, err := protocol.ParseStatus(p)
		if err != nil {
			return
		}
		h.mu.Lock()
		h.reports = append(h.reports, s.Apps...)
		h.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *statusHistory) errors() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.reports {
		if r.LastError != "" {
			out = append(out, r.LastError)
		}
	}
	return out
}

// TestMQTTDecidesOnCompleteView (item 1): a committed device restarts
// and reconnects several times while the channel holds a build for its
// CPU and one for another; it never reports a false "wrong CPU" error
// (the retained messages arrive in any order, the device waits for its
// sync marker). After the operator retires the device's build, what is
// left runs nowhere here: a note, not a failure.
func TestMQTTDecidesOnCompleteView(t *testing.T) {
	k := newKit(t)
	mine := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	other := k.bundle(spec{Version: "1.0.0", Sequence: 1, Target: testkit.Target{GOARCH: "arm64"}, Profile: "linux-arm64", NoProbe: true})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	hist := watchStatuses(t, b.URL())
	publish(t, op, k, other, "")
	publish(t, op, k, mine, "")
	cfg := mqttConfig(t, k, "dev-view", b.URL())
	for i := 0; i < 5; i++ {
		dev := startMQTTDevice(t, cfg)
		eventually(t, "the device runs 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
		eventually(t, "its status says so", func() bool {
			a := deviceApp(view, "dev-view")
			return a.Version == "1.0.0" && a.State == StateCommitted
		})
		time.Sleep(300 * time.Millisecond) // let every evaluation of this run report
		dev.stop()
	}
	if errs := hist.errors(); len(errs) > 0 {
		t.Fatalf("a committed device reported errors while (re)connecting: %q", errs)
	}

	dev := startMQTTDevice(t, cfg)
	defer dev.stop()
	if _, err := fleet.Retire(context.Background(), op, "hello", "1.0.0", t.Logf); err != nil {
		t.Fatal(err)
	}
	publish(t, op, k, other, "") // the other build stays (retire took both)
	eventually(t, "the device notes that nothing on the channel runs here", func() bool {
		a := deviceApp(view, "dev-view")
		return strings.Contains(a.Note, "published profiles runs on this")
	})
	a := deviceApp(view, "dev-view")
	if a.LastError != "" || fleet.Failed(a) || view.Summary().Failed != 0 {
		t.Errorf("a healthy device counts as failed: %+v, summary %+v", a, view.Summary())
	}
	if !installedIs(dev, "1.0.0", StateCommitted) {
		t.Error("the device no longer runs 1.0.0")
	}
}

// TestMQTTRenewedManifestTried (item 4): an expired release is refused;
// the operator renews its manifest (same reproducible payload, new
// expiry) and the device installs it without a restart.
func TestMQTTRenewedManifestTried(t *testing.T) {
	k := newKit(t)
	past := time.Now().Add(-time.Hour)
	future := time.Now().Add(24 * time.Hour)
	expired := k.bundle(spec{Version: "1.0.0", Sequence: 1, Expires: &past})
	renewed := k.bundle(spec{Version: "1.0.0", Sequence: 1, Expires: &future})
	me, _ := bundleChunks(t, k, expired)
	mr, _ := bundleChunks(t, k, renewed)
	if me.Payload.SHA256 != mr.Payload.SHA256 {
		t.Fatal("the renewed bundle should carry the same payload")
	}
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	kr := protocol.NewKeyring(k.pub)
	if _, err := fleet.PublishBundle(context.Background(), op, expired, fleet.PublishOptions{Keyring: kr, Channel: "stable", Now: func() time.Time { return past.Add(-time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-renew", b.URL()))
	defer dev.stop()
	eventually(t, "the expired release is refused", func() bool {
		a := deviceApp(view, "dev-renew")
		return strings.Contains(a.LastError, "refused") && strings.Contains(a.LastError, "expire")
	})
	publish(t, op, k, renewed, "")
	eventually(t, "the renewed release installs", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
}

// TestMQTTKilledAgentKeepsItsState (item 5): a real agent is killed with
// SIGKILL (what a power cut looks like to the broker). The fleet view
// still shows what it ran, offline, last seen after it committed (not
// when it connected).
func TestMQTTKilledAgentKeepsItsState(t *testing.T) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	bin := goBuild(t, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=0.0.1-test")
	cmd, out, _ := realAgent(t, bin, k, "pi-kill", b.URL(), "")
	killAtCleanup(t, cmd, out, "pi-kill")
	eventually(t, "the agent is online", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "pi-kill" {
				return d.Online
			}
		}
		return false
	})
	// The commit must come measurably later than the connect, so that a
	// last contact counted from the connect (the old will) is told apart.
	time.Sleep(1100 * time.Millisecond)
	publish(t, op, k, v1, "")
	eventually(t, "the agent commits 1.0.0", func() bool { return view.Converged("hello", "1.0.0", 1, StateCommitted) })
	var committedAt time.Time // the time of the status that says committed
	for _, d := range view.Devices() {
		if d.Device == "pi-kill" {
			committedAt = d.Time
		}
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	eventually(t, "the killed agent shows offline", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "pi-kill" {
				return !d.Online
			}
		}
		return false
	})
	for _, d := range view.Devices() {
		if d.Device != "pi-kill" {
			continue
		}
		if len(d.Apps) != 1 || d.Apps[0].Version != "1.0.0" || d.Apps[0].State != StateCommitted {
			t.Errorf("the offline device lost its last known state: %+v", d.Apps)
		}
		if d.Time.Before(committedAt) {
			t.Errorf("last seen %s is before the device reported its commit (%s): it counts from the connect, not the last contact", d.Time, committedAt)
		}
	}
	var buf strings.Builder
	view.WriteTable(&buf, time.Now())
	if !strings.Contains(buf.String(), "1.0.0") || !strings.Contains(buf.String(), "offline") {
		t.Errorf("status table:\n%s", buf.String())
	}
}

// TestMQTTStaleViewReadAgain (item 6): a broker that admitted the device
// before it loaded its retained set delivers no release on the first
// subscription (emulated by losing those deliveries: no broker here
// starts that way on demand). The device reads the release topics again
// after a connect and installs without a restart.
func TestMQTTStaleViewReadAgain(t *testing.T) {
	oldR := mqttRefresh
	mqttRefresh = []time.Duration{time.Second}
	var mu sync.Mutex
	lose := true
	mqttLoseMessage = func(topic string) bool {
		mu.Lock()
		defer mu.Unlock()
		return lose && strings.Contains(topic, "/release/")
	}
	t.Cleanup(func() { mqttRefresh, mqttLoseMessage = oldR, nil })
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	publish(t, op, k, v1, "")
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "dev-stale", b.URL()))
	defer dev.stop()
	eventually(t, "the device connected", func() bool { return strings.Contains(log.String(), "mqtt: connected") })
	time.Sleep(300 * time.Millisecond) // the first subscription's deliveries are lost
	mu.Lock()
	lose = false
	mu.Unlock()
	eventually(t, "the device finds the release on a later read", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
}

// TestMQTTBrokerDownNoLogFlood (item 7): while the broker is unreachable
// the agent logs a line per state change, not one every tick.
func TestMQTTBrokerDownNoLogFlood(t *testing.T) {
	data := t.TempDir()
	b := startTestBroker(t, data, "127.0.0.1:0")
	addr := b.Addr()
	k := newKit(t)
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "dev-flood", b.URL()))
	defer dev.stop()
	eventually(t, "the device connected", func() bool { return strings.Contains(log.String(), "mqtt: connected") })
	before := len(log.String())
	b.Close()
	time.Sleep(6 * time.Second) // 12 housekeeping ticks
	outage := log.String()[before:]
	lines := strings.Count(outage, "\n")
	if lines > 4 || strings.Contains(outage, "not currently connected") || strings.Contains(outage, "subscribing again") {
		t.Errorf("%d log lines in a 6 s outage, want one per state change:\n%s", lines, outage)
	}
	b2 := startTestBroker(t, data, addr)
	defer b2.Close()
	eventually(t, "the device reconnects", func() bool { return strings.Count(log.String(), "mqtt: connected") >= 2 })
}
