package fleet

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

const perDeviceACL = "../docs/mosquitto/edgefleet-per-device.acl"

// TestACLPerDeviceMosquitto runs real Mosquitto with
// docs/mosquitto/edgefleet-per-device.acl as written, whose example
// blocks give pi-017 channel stable and app hello, and pi-018 channel beta
// (hello) and stable (sensor). pi-017, logged in on the documented device
// listener (TLS, client id = user name), reads its channel's release, its
// app's chunks and its own desired topic; it gets nothing for another
// channel's release, another app's chunks, a chunk sweep beyond its app
// or another device's desired topic, and cannot write another device's
// status. Mosquitto acknowledges a refused subscription and drops what it
// would deliver: each denial is judged by a marker published after it on
// the device's own sync topic, which does arrive (received).
func TestACLPerDeviceMosquitto(t *testing.T) {
	ctx := context.Background()
	m := startMosquittoACL(t, map[string]string{"operator": "operator-secret", "pi-017": "pi-017-secret", "pi-018": "pi-018-secret"}, false, perDeviceACL)
	dir := t.TempDir()
	hello := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)
	sensor := makeBundle(t, dir, "sensor", "1.0.0", 1, 10_000)
	op := connect(t, m.opURL, "operator", "operator-secret", "")
	for _, pub := range []PublishOptions{
		{Keyring: hello.kr, Channel: "stable"}, {Keyring: hello.kr, Channel: "beta"}, {Keyring: hello.kr, Device: "pi-017"}, {Keyring: hello.kr, Device: "pi-018"},
	} {
		if _, err := PublishBundle(ctx, op, hello.path, pub); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := PublishBundle(ctx, op, sensor.path, PublishOptions{Keyring: sensor.kr, Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
	dev := func(name string) paho.Client {
		t.Helper()
		c, err := Connect(ctx, ClientOptions{Broker: m.devURL, CA: m.ca.File, Username: name, Password: name + "-secret", ClientID: name, ConnectTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("%s on the device listener: %v", name, err)
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c
	}
	p := protocol.TopicPrefix
	stableHello, _ := protocol.ReleaseFilter("stable", "hello")
	betaHello, _ := protocol.ReleaseFilter("beta", "hello")
	stableSensor, _ := protocol.ReleaseFilter("stable", "sensor")
	helloChunks, _ := protocol.ChunksFilter("hello", hello.m.Payload.SHA256)
	sensorChunks, _ := protocol.ChunksFilter("sensor", sensor.m.Payload.SHA256)
	ownDesired, _ := protocol.DesiredTopic("pi-017", "hello")
	otherDesired, _ := protocol.DesiredTopic("pi-018", "hello")

	a := dev("pi-017")
	got := received(t, a, p+"device/pi-017/sync",
		stableHello, helloChunks, ownDesired,
		betaHello, stableSensor, sensorChunks, otherDesired, p+"release/#", p+"chunks/#", p+"device/+/desired/#")
	want := map[string]int{stableHello: 1, helloChunks: len(hello.m.Payload.Chunks), ownDesired: 1,
		betaHello: 0, stableSensor: 0, sensorChunks: 0, otherDesired: 0}
	for f, n := range want {
		if len(got[f]) != n {
			t.Errorf("pi-017 (channel stable, app hello) received %d messages for %s, want %d: %v", len(got[f]), f, n, got[f])
		}
	}
	// Wildcards: whether Mosquitto accepts them or not, they bring
	// nothing beyond pi-017's own.
	for _, f := range []string{p + "release/#", p + "chunks/#", p + "device/+/desired/#"} {
		for _, tp := range got[f] {
			if !strings.HasPrefix(tp, p+"release/stable/hello/") && !strings.HasPrefix(tp, p+"chunks/hello/") && tp != ownDesired {
				t.Errorf("pi-017's wildcard %s delivered %s", f, tp)
			}
		}
	}
	// pi-018's block: beta's hello and stable's sensor, not stable's hello.
	b := dev("pi-018")
	got = received(t, b, p+"device/pi-018/sync", betaHello, stableSensor, sensorChunks, stableHello)
	if len(got[betaHello]) != 1 || len(got[stableSensor]) != 1 || len(got[sensorChunks]) != len(sensor.m.Payload.Chunks) || len(got[stableHello]) != 0 {
		t.Errorf("pi-018 (beta hello, stable sensor) received %v", got)
	}

	// Writes: pi-017 writes its own status, not pi-018's (refused writes
	// at QoS 0, then its own status at QoS 1: once that is acknowledged
	// the broker judged the refused ones).
	statusA, _ := protocol.StatusTopic("pi-017")
	statusB, _ := protocol.StatusTopic("pi-018")
	rawB := statusFor(t, "pi-018")
	if err := wait(ctx, b.Publish(statusB, 1, true, rawB), time.Minute); err != nil {
		t.Fatal(err)
	}
	wait(ctx, a.Publish(statusB, 0, true, []byte(`{"schema":1,"forged":true}`)), time.Minute)
	wait(ctx, a.Publish(otherDesired, 0, true, []byte(`{"forged":true}`)), time.Minute)
	rawA := statusFor(t, "pi-017")
	if err := wait(ctx, a.Publish(statusA, 1, true, rawA), time.Minute); err != nil {
		t.Fatalf("pi-017 cannot write its own status: %v", err)
	}
	snap, err := Snapshot(ctx, op, []string{statusA, statusB, otherDesired})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap[statusA], rawA) {
		t.Errorf("pi-017's own status was not stored: %q", snap[statusA])
	}
	if !bytes.Equal(snap[statusB], rawB) {
		t.Errorf("pi-017 overwrote pi-018's status: %q", snap[statusB])
	}
	if bytes.Contains(snap[otherDesired], []byte("forged")) {
		t.Error("pi-017 overwrote pi-018's desired release")
	}
}

// The per-device ACL's operator blocks are edgefleet.acl's, so that the
// role tests of edgefleet.acl (TestACLOperatorRolesMosquitto) hold for it.
func TestPerDeviceACLOperatorBlocksMatch(t *testing.T) {
	blocks := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		in := false
		for _, l := range strings.Split(string(b), "\n") {
			switch {
			case strings.HasPrefix(l, "user "):
				in = l == "user operator" || l == "user viewer" || l == "user publisher"
			case strings.HasPrefix(l, "pattern "), strings.HasPrefix(l, "#"), l == "":
				if strings.HasPrefix(l, "pattern ") {
					in = false
				}
				continue
			}
			if in {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	if a, b := blocks("../docs/mosquitto/edgefleet.acl"), blocks(perDeviceACL); a != b || a == "" {
		t.Errorf("the operator blocks of %s differ from edgefleet.acl's; keep them in step:\n%s\n---\n%s", perDeviceACL, b, a)
	}
}
