package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// targetingScenario: with a key set that names a targeting key, a device
// installs only releases that are genuine and targeted at its channel (or
// at it); a canary re-published on its channel, another device's release
// re-published on its desired topic, an untargeted release and an expired
// targeting are refused and reported.
func targetingScenario(t *testing.T, url string) {
	ctx := context.Background()
	k := newKit(t)
	r := newRoots(t, 1)
	_, tkey, _ := protocol.GenerateKey()
	op := operator(t, url)
	view := fleetView(t, op)
	publishKeySet(t, op, chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, release: []protocol.ReleaseKey{relKey(k.priv)},
		target: []protocol.ScopedKey{{Key: protocol.PublicKeyLine(pubOf(tkey))}}}, r.privs[0])))
	kr := protocol.NewKeyring(k.pub)
	pub := func(path string, o fleet.PublishOptions) {
		t.Helper()
		o.Keyring = kr
		if _, err := fleet.PublishBundle(ctx, op, path, o); err != nil {
			t.Fatal(err)
		}
	}
	targeted := &fleet.TargetingOptions{Key: tkey}
	pub(k.bundle(spec{Version: "1.0.0", Sequence: 1}), fleet.PublishOptions{Channel: "stable", Targeting: targeted})
	dev := startMQTTDevice(t, rootConfig(t, mqttConfig(t, k, "tg-dev", url), r))
	defer dev.stop()
	eventually(t, "a genuine release targeted at stable installs", func() bool { return installedIs(dev, "1.0.0", "committed") })
	lastErrHas := func(what, s string) {
		t.Helper()
		eventually(t, what, func() bool { return strings.Contains(deviceApp(view, "tg-dev").LastError, s) })
		if !installedIs(dev, "1.0.0", "committed") {
			t.Fatalf("%s: the device installed it", what)
		}
	}
	copyEnvelope := func(from, to string) {
		t.Helper()
		snap, err := fleet.Snapshot(ctx, op, []string{from})
		if err != nil || len(snap[from]) == 0 {
			t.Fatalf("read %s: %v", from, err)
		}
		if tok := op.Publish(to, 1, true, snap[from]); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	canary := k.bundle(spec{Version: "2.0.0-canary", Sequence: 2, NoProbe: true})
	pub(canary, fleet.PublishOptions{Channel: "canary", Targeting: targeted})
	profile := "linux-" + native.GOARCH
	canaryTopic, _ := protocol.ReleaseTopic("canary", "hello", profile)
	stableTopic, _ := protocol.ReleaseTopic("stable", "hello", profile)
	copyEnvelope(canaryTopic, stableTopic)
	lastErrHas("a canary re-published on stable is refused", "is targeted at channel canary, but arrived for channel stable")

	pub(canary, fleet.PublishOptions{Device: "other-dev", Targeting: targeted})
	otherDesired, _ := protocol.DesiredTopic("other-dev", "hello")
	ownDesired, _ := protocol.DesiredTopic("tg-dev", "hello")
	copyEnvelope(otherDesired, ownDesired)
	lastErrHas("another device's release re-published on this one's desired topic is refused", "targeted at device other-dev, but arrived for device tg-dev")
	if tok := op.Publish(ownDesired, 1, true, []byte{}); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	v3 := k.bundle(spec{Version: "3.0.0", Sequence: 3})
	pub(v3, fleet.PublishOptions{Channel: "stable"})
	lastErrHas("an untargeted release is refused", "carries no targeting")
	pub(v3, fleet.PublishOptions{Channel: "stable", Targeting: targeted, Now: func() time.Time { return time.Now().Add(-40 * 24 * time.Hour) }})
	lastErrHas("an expired targeting is refused", "expired")

	pub(v3, fleet.PublishOptions{Channel: "stable", Targeting: targeted})
	eventually(t, "3.0.0 genuine and targeted at stable installs", func() bool { return installedIs(dev, "3.0.0", "committed") })
}

func TestTargetingEmbeddedBroker(t *testing.T) {
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	targetingScenario(t, b.URL())
}

func TestTargetingMosquitto(t *testing.T) {
	targetingScenario(t, startPlainMosquitto(t))
}

// TestTargetingKeyRemovedOrRevoked: a device holds key set 1 with
// targeting key T and installs a release T targeted; the operator then
// publishes key set 2 that names T2 instead of T, and key set 3 that
// also revokes T. A release targeted with T is refused after each, with
// the reason in the status; one targeted with T2 installs. Real daemon
// over the embedded broker.
func TestTargetingKeyRemovedOrRevoked(t *testing.T) {
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	url := b.URL()
	ctx := context.Background()
	k := newKit(t)
	r := newRoots(t, 1)
	_, tOld, _ := protocol.GenerateKey()
	_, tNew, _ := protocol.GenerateKey()
	op := operator(t, url)
	view := fleetView(t, op)
	keySet := func(version uint64, target protocol.PrivateKey, revoked ...protocol.PublicKey) {
		t.Helper()
		publishKeySet(t, op, chainMsg(t, signKeySet(t, keySetOpts{version: version, roots: r.privs, release: []protocol.ReleaseKey{relKey(k.priv)},
			target: []protocol.ScopedKey{{Key: protocol.PublicKeyLine(pubOf(target))}}, revoked: revoked}, r.privs[0])))
	}
	kr := protocol.NewKeyring(k.pub)
	pub := func(path string, tkey protocol.PrivateKey) {
		t.Helper()
		if _, err := fleet.PublishBundle(ctx, op, path, fleet.PublishOptions{Keyring: kr, Channel: "stable", Targeting: &fleet.TargetingOptions{Key: tkey}}); err != nil {
			t.Fatal(err)
		}
	}
	keySet(1, tOld)
	pub(k.bundle(spec{Version: "1.0.0", Sequence: 1}), tOld)
	dev := startMQTTDevice(t, rootConfig(t, mqttConfig(t, k, "tk-dev", url), r))
	defer dev.stop()
	eventually(t, "1.0.0 targeted with T (key set 1) installs", func() bool { return installedIs(dev, "1.0.0", "committed") })

	refused := func(what, s string) {
		t.Helper()
		eventually(t, what, func() bool {
			return strings.Contains(deviceApp(view, "tk-dev").LastError, s) || !installedIs(dev, "1.0.0", "committed")
		})
		if !installedIs(dev, "1.0.0", "committed") {
			t.Fatalf("%s: the device installed it", what)
		}
	}
	keySet(2, tNew)
	eventually(t, "the device takes key set 2", func() bool { return dev.a.Trust().KeySet == 2 })
	pub(k.bundle(spec{Version: "2.0.0", Sequence: 2, NoProbe: true}), tOld)
	refused("a release targeted with T, which key set 2 no longer names, is refused and reported",
		"which key set version 2 does not name as a targeting key")

	keySet(3, tNew, pubOf(tOld))
	eventually(t, "the device takes key set 3", func() bool { return dev.a.Trust().KeySet == 3 })
	pub(k.bundle(spec{Version: "3.0.0", Sequence: 3, NoProbe: true}), tOld)
	refused("a release targeted with T, which key set 3 revokes, is refused and reported", "which key set version 3 revokes")

	pub(k.bundle(spec{Version: "4.0.0", Sequence: 4}), tNew)
	eventually(t, "4.0.0 targeted with T2 installs", func() bool { return installedIs(dev, "4.0.0", "committed") })
}
