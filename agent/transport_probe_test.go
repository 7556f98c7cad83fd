package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// TestMQTTProbeTimeoutRetried: on a loaded device a good release's probe
// (a real hello --version that sleeps while a file exists) overruns its
// timeout. That is reported as a transient failure and retried with the
// backoff, not refused for good: once the device is calm the same release
// installs without being published again.
func TestMQTTProbeTimeoutRetried(t *testing.T) {
	shortRetries(t)
	slow := filepath.Join(t.TempDir(), "slow")
	if err := os.WriteFile(slow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HELLO_SLOW_FILE", slow)
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1, Probe: &protocol.Probe{Args: []string{"--version"}, Expect: "1.0.0", Timeout: protocol.Duration(200 * time.Millisecond)}})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "dev-slowprobe", b.URL()))
	defer dev.stop()
	eventually(t, "the probe timeout is reported as a retry", func() bool {
		e := deviceError(view, "dev-slowprobe")
		return strings.Contains(e, "did not finish within 200ms") && strings.Contains(e, "retrying in")
	})
	eventually(t, "the probe is tried again", func() bool { return strings.Count(log.String(), "did not finish within 200ms") >= 2 })
	if strings.Contains(log.String(), "refused") {
		t.Fatalf("a probe timeout condemned the release:\n%s", log)
	}
	os.Remove(slow)
	eventually(t, "the same release installs once the probe is fast", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
}
