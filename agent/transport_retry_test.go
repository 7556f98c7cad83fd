package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// shortRetries makes the transient backoff short for one test.
func shortRetries(t *testing.T) {
	min, max := mqttRetryMin, mqttRetryMax
	mqttRetryMin, mqttRetryMax = 100*time.Millisecond, 400*time.Millisecond
	t.Cleanup(func() { mqttRetryMin, mqttRetryMax = min, max })
}

// bundleChunks opens a bundle and returns its manifest and chunks.
func bundleChunks(t testing.TB, k *kit, path string) (*protocol.Manifest, [][]byte) {
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
	m := b.Manifest
	pay, err := b.Payload()
	if err != nil {
		t.Fatal(err)
	}
	chunks := make([][]byte, len(m.Payload.Chunks))
	for i := range chunks {
		chunks[i] = make([]byte, m.Payload.ChunkLen(i))
		if _, err := io_ReadFull(pay, chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	return m, chunks
}

// publishChunk publishes raw bytes, retained, as chunk i of m (operators
// may; this is how a corrupt copy gets onto the broker in these tests).
func publishChunk(t *testing.T, c paho.Client, m *protocol.Manifest, i int, b []byte) {
	t.Helper()
	tp, err := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(tp, 1, true, b); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatalf("publish chunk %d: %v", i, tok.Error())
	}
}

func corrupt(b []byte) []byte {
	bad := append([]byte(nil), b...)
	for i := range bad {
		bad[i] ^= 0x5a
	}
	return bad
}

func deviceError(view *fleet.FleetView, id string) string { return deviceApp(view, id).LastError }

// corruptChunkRepublished: the broker holds a corrupt copy of chunk 1.
// The device asks for it again at once, gives up after mqttChunkTries bad
// copies and says so in its status; the operator publishes the release
// again and the device installs it, fetching each good chunk only once.
func corruptChunkRepublished(t *testing.T, url string) {
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Encoding: protocol.EncodingNone})
	m, chunks := bundleChunks(t, k, v1)
	if len(chunks) < 3 {
		t.Fatalf("test bundle has %d chunks, want at least 3", len(chunks))
	}
	op := operator(t, url)
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	publishChunk(t, op, m, 1, corrupt(chunks[1]))

	dev := startMQTTDevice(t, mqttConfig(t, k, "dev-corrupt", url))
	defer dev.stop()
	want := "chunk 1 from the broker does not match the signed hash 3 times: the broker's copy is corrupt; republish the release"
	eventually(t, "the device reports the corrupt chunk", func() bool { return strings.Contains(deviceError(view, "dev-corrupt"), want) })
	if got := dev.stats().ChunksBad.Load(); got != int64(mqttChunkTries) {
		t.Errorf("the device received %d corrupt copies; it should ask %d times, then stop", got, mqttChunkTries)
	}
	if installedIs(dev, "1.0.0", StateCommitted) || installedIs(dev, "1.0.0", StateTrial) {
		t.Fatal("installed a release with a corrupt chunk")
	}

	publish(t, op, k, v1, "") // the operator's fix: publish the release again
	eventually(t, "the device installs after the release is published again", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	if got := dev.stats().ChunksReceived.Load(); got != int64(len(chunks)) {
		t.Errorf("the device wrote %d chunks for a %d-chunk release; the good ones must not be fetched again", got, len(chunks))
	}
	eventually(t, "the status error clears", func() bool {
		return view.Converged("hello", "1.0.0", 1, StateCommitted) && deviceError(view, "dev-corrupt") == ""
	})
}

// TestMQTTCorruptChunkFixedRetriedAfterBackoff: the operator fixes only
// the chunk (no new release message); the device finds it on its next
// attempt after the backoff.
func TestMQTTCorruptChunkFixedRetriedAfterBackoff(t *testing.T) {
	shortRetries(t)
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Encoding: protocol.EncodingNone})
	m, chunks := bundleChunks(t, k, v1)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	publish(t, op, k, v1, "")
	last := len(chunks) - 1
	publishChunk(t, op, m, last, corrupt(chunks[last]))
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "dev-backoff", b.URL()))
	defer dev.stop()
	eventually(t, "the device gives up on the corrupt chunk", func() bool {
		return strings.Contains(log.String(), "does not match the signed hash 3 times")
	})
	publishChunk(t, op, m, last, chunks[last])
	eventually(t, "the device installs on a later attempt", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	if got := dev.stats().ChunksReceived.Load(); got != int64(len(chunks)) {
		t.Errorf("the device wrote %d chunks for a %d-chunk release", got, len(chunks))
	}
}

// TestMQTTStorageFullRetried: a release that does not fit is a transient
// failure: reported, retried with backoff, and installed from the kept
// download (no chunk fetched twice) once space is freed.
func TestMQTTStorageFullRetried(t *testing.T) {
	shortRetries(t)
	size := helloSize(t, "1.0.0")
	fs := mountTmpfs(t, 3*size)
	filler := filepath.Join(fs, "filler")
	if err := os.WriteFile(filler, make([]byte, 5*size/2), 0o644); err != nil {
		t.Fatal(err)
	}
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	n := chunkCount(t, k, v1)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")

	cfg := mqttConfig(t, k, "dev-full", b.URL())
	cfg.Apps[0].Path = filepath.Join(fs, "opt", "hello")
	dev, log := startMQTTDeviceLogged(t, cfg)
	defer dev.stop()
	eventually(t, "the status says the storage is full and that it retries", func() bool {
		e := deviceError(view, "dev-full")
		return strings.Contains(e, "not enough storage") && strings.Contains(e, "retrying in")
	})
	eventually(t, "a second attempt fails too (backoff, not given up)", func() bool {
		return strings.Contains(log.String(), "(attempt 2; retrying in")
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the device installs once space is free", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	if got := dev.stats().ChunksReceived.Load(); got != int64(n) {
		t.Errorf("the device fetched %d chunks for a %d-chunk release; retries must reuse the download", got, n)
	}
}

// TestMQTTFatalNotRetried: a release whose probe fails is refused once,
// reported, and not fetched or tried again for that payload, even when
// published again; the next release installs.
func TestMQTTFatalNotRetried(t *testing.T) {
	shortRetries(t)
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Probe: &protocol.Probe{Args: []string{"--version"}, Expect: "9.9.9", Timeout: protocol.Duration(10 * time.Second)}})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	n1, n2 := chunkCount(t, k, v1), chunkCount(t, k, v2)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "dev-probe", b.URL()))
	defer dev.stop()
	eventually(t, "the probe failure is reported", func() bool {
		e := deviceError(view, "dev-probe")
		return strings.Contains(e, "1.0.0 refused") && strings.Contains(e, "probe")
	})
	publish(t, op, k, v1, "") // delivered again: still refused, not fetched
	publish(t, op, k, v2, "") // handled after the re-delivery (one connection, in order)
	eventually(t, "the next release installs", func() bool { return installedIs(dev, "2.0.0", StateCommitted) })
	if got := dev.stats().ChunksReceived.Load(); got != int64(n1+n2) {
		t.Errorf("the device fetched %d chunks; want %d (the refused release once, then the next one)", got, n1+n2)
	}
	if c := strings.Count(log.String(), "mqtt: hello 1.0.0 refused"); c != 1 {
		t.Errorf("the refused release was tried %d times, want once:\n%s", c, log)
	}
}

func TestRetryDelay(t *testing.T) {
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for i, w := range want {
		if got := retryDelay(i + 1); got != w {
			t.Errorf("retryDelay(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := retryDelay(1000); got != mqttRetryMax {
		t.Errorf("retryDelay(1000) = %s, want the cap %s", got, mqttRetryMax)
	}
}
