package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// TestMQTTStalledBrokerSwitch: a broker that holds the release's envelope
// but never its chunks (a cluster node serving a stale retained set) is
// left for another broker once the download stalls there; the device
// installs through the other one.
func TestMQTTStalledBrokerSwitch(t *testing.T) {
	old := mqttStall
	mqttStall = 500 * time.Millisecond
	t.Cleanup(func() { mqttStall = old })
	k := newKit(t)
	stale := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	good := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	urls := []string{stale.URL(), good.URL()}
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	kr := protocol.NewKeyring(k.pub)
	if _, err := fleet.PublishBundle(context.Background(), operator(t, stale.URL()), v1, fleet.PublishOptions{Keyring: kr, Channel: "stable", EnvelopeOnly: true}); err != nil {
		t.Fatal(err)
	}
	publish(t, operator(t, good.URL()), k, v1, "")
	// A device whose order dials the stale broker first.
	id := ""
	for i := 0; i < 100 && id == ""; i++ {
		if c := fmt.Sprintf("dev-sw-%d", i); brokerOrder(c, urls)[0] == urls[0] {
			id = c
		}
	}
	cfg := mqttConfig(t, k, id, urls[0])
	cfg.Broker.URL, cfg.Broker.URLs = "", urls
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, log := startMQTTDeviceLogged(t, cfg)
	defer d.stop()
	eventually(t, "the device installs 1.0.0 through the broker that has the chunks", func() bool { return installedIs(d, "1.0.0", StateCommitted) })
	if !strings.Contains(log.String(), "connected to "+urls[0]) || !strings.Contains(log.String(), "chunks stalled") || !strings.Contains(log.String(), "moving to another of the 2 brokers") {
		t.Fatalf("the device did not start on the stale broker and move away from it:\n%s", log)
	}
}
