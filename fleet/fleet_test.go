package fleet

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// snapshotRelease reads the retained envelope and chunks of r.
func snapshotRelease(t *testing.T, c paho.Client, topic string, r testRelease) (env []byte, payload []byte) {
	t.Helper()
	cf, _ := protocol.ChunksFilter(r.m.App, r.m.Payload.SHA256)
	snap, err := Snapshot(context.Background(), c, []string{topic, cf})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for i := range r.m.Payload.Chunks {
		ct, _ := protocol.ChunkTopic(r.m.App, r.m.Payload.SHA256, i)
		b, ok := snap[ct]
		if !ok {
			return snap[topic], nil
		}
		buf.Write(b)
	}
	return snap[topic], buf.Bytes()
}

func TestPublishSurvivesBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	data := t.TempDir()
	r := makeBundle(t, dir, "hello", "1.0.0", 1, 40_000)
	b := startEmbedded(t, BrokerOptions{DataDir: data})
	c := connect(t, b.URL(), "", "", "")
	var progress []int64
	res, err := PublishBundle(context.Background(), c, r.path, PublishOptions{Keyring: r.kr, Channel: "stable", InFlight: 3,
		Progress: func(done, total int64) { progress = append(progress, done) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Chunks != 10 || res.Bytes != 40_000 || progress[len(progress)-1] != 40_000 {
		t.Fatalf("published %+v, progress %v", res, progress)
	}
	c.Disconnect(100)
	b.Close()

	b2 := startEmbedded(t, BrokerOptions{DataDir: data})
	c2 := connect(t, b2.URL(), "", "", "")
	env, payload := snapshotRelease(t, c2, res.Topic, r)
	if !bytes.Equal(payload, r.payload) {
		t.Fatalf("after a restart the retained chunks give %d bytes, want the %d published", len(payload), len(r.payload))
	}
	e, err := protocol.ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Open(r.kr)
	if err != nil {
		t.Fatal(err)
	}
	if m.Payload.SHA256 != r.m.Payload.SHA256 || res.Topic != "edgefleet/v1/release/stable/hello/linux-amd64/manifest" {
		t.Fatalf("envelope manifest %v on %s", m, res.Topic)
	}
}

func TestPublishRefusesUnverifiedBundle(t *testing.T) {
	dir := t.TempDir()
	r := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	c := connect(t, b.URL(), "", "", "")
	otherPub, _, _ := protocol.GenerateKey()
	_, err := PublishBundle(context.Background(), c, r.path, PublishOptions{Keyring: protocol.NewKeyring(otherPub), Channel: "stable"})
	if !errors.Is(err, protocol.ErrUnknownKey) {
		t.Fatalf("untrusted bundle: err %v, want ErrUnknownKey", err)
	}
	// A flipped payload byte.
	raw, _ := readFile(r.path)
	raw[len(raw)-2048] ^= 1 // inside the payload (tar pads the end with ≥1024 zero bytes)
	bad := dir + "/bad.efb"
	writeFile(t, bad, raw)
	if _, err := PublishBundle(context.Background(), c, bad, PublishOptions{Keyring: r.kr, Channel: "stable"}); !errors.Is(err, protocol.ErrPayloadMismatch) {
		t.Fatalf("tampered bundle: err %v, want ErrPayloadMismatch", err)
	}
	snap, err := Snapshot(context.Background(), c, []string{protocol.TopicPrefix + "#"})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap) != 0 {
		t.Fatalf("refused bundles left %d retained messages", len(snap))
	}
}

func TestRetire(t *testing.T) {
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	c := connect(t, b.URL(), "", "", "")
	ctx := context.Background()
	v1 := makeBundle(t, dir, "hello", "1.0.0", 1, 20_000)
	v2 := makeBundle(t, dir, "hello", "2.0.0", 2, 20_000)
	v3 := makeBundleFrom(t, dir, "hello", "3.0.0", 3, v2.payload) // same payload as v2
	for _, p := range []struct {
		r            testRelease
		channel, dev string
	}{{v1, "stable", ""}, {v1, "beta", ""}, {v1, "", "pi-1"}, {v2, "stable", ""}, {v3, "beta", ""}} {
		if _, err := PublishBundle(ctx, c, p.r.path, PublishOptions{Keyring: v1.kr, Channel: p.channel, Device: p.dev}); err != nil {
			t.Fatal(err)
		}
	}
	// stable now has v2 (v1 was replaced on the same topic); beta v3; pi-1 v1.
	res, err := Retire(ctx, c, "hello", "1.0.0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cleared) != 1 || res.Cleared[0] != "edgefleet/v1/device/pi-1/desired/hello" || res.ChunksCleared != 5 {
		t.Fatalf("retire 1.0.0: %+v", res)
	}
	if _, p := snapshotRelease(t, c, "x", v1); p != nil {
		t.Fatal("v1 chunks still retained after retire")
	}
	res, err = Retire(ctx, c, "hello", "2.0.0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cleared) != 1 || res.ChunksCleared != 0 || res.SharedPayloads != 1 {
		t.Fatalf("retire 2.0.0 (payload shared with 3.0.0): %+v", res)
	}
	rt, _ := protocol.ReleaseTopic("beta", "hello", "linux-amd64")
	env, p := snapshotRelease(t, c, rt, v3)
	if env == nil || !bytes.Equal(p, v3.payload) {
		t.Fatal("retiring 2.0.0 damaged 3.0.0, which shares its payload")
	}
}

// TestStatusView aggregates real retained status messages published by
// device connections, including malformed ones.
func TestStatusView(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	ctx := context.Background()
	now := time.Now().UTC()
	pub := func(dev string, payload []byte) {
		c := connect(t, b.URL(), "", "", dev)
		topic := protocol.TopicPrefix + "device/" + dev + "/status"
		if err := wait(ctx, c.Publish(topic, 1, true, payload), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	st := func(dev, ver, state, lastErr string, online bool) []byte {
		s := &protocol.DeviceStatus{Schema: 1, Device: dev, Profile: "linux-amd64", Time: now, Online: online,
			Apps: []protocol.AppReport{{App: "hello", Version: ver, Sequence: 1, State: state, LastError: lastErr}}}
		raw, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	pub("dev-1", st("dev-1", "1.0.0", "committed", "", true))
	pub("dev-2", st("dev-2", "1.0.0", "rolled-back", "health check failed: exit status 1", true))
	pub("dev-3", st("dev-3", "2.0.0", "trial", "", false))
	pub("dev-4", []byte("{not json"))
	pub("dev-5", st("dev-1", "1.0.0", "committed", "", true)) // claims another id

	v := NewFleetView()
	c := connect(t, b.URL(), "", "", "")
	var mu sync.Mutex
	var dropped []string
	if err := Subscribe(ctx, c, []string{protocol.StatusFilter}, func(topic string, payload []byte) {
		if err := v.Update(topic, payload); err != nil {
			mu.Lock()
			dropped = append(dropped, err.Error())
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	s := v.Summary()
	if s.Devices != 3 || s.Offline != 1 || s.Failed != 0 || s.RolledBack != 1 || s.Versions["hello"]["1.0.0"] != 2 || s.Versions["hello"]["2.0.0"] != 1 || s.Dropped != 2 {
		t.Fatalf("summary %+v (dropped: %q)", s, dropped)
	}
	var out bytes.Buffer
	v.WriteTable(&out, now.Add(90*time.Second))
	for _, want := range []string{"DEVICE", "dev-2", "rolled-back", "health check failed", "offline 1m ago",
		"3 devices, 1 offline, 0 failed, 1 rolled back; hello 1.0.0: 2, 2.0.0: 1 (2 malformed status messages ignored)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if !v.Converged("hello", "1.0.0", 2) || v.Converged("hello", "1.0.0", 3) || !v.Converged("hello", "1.0.0", 1, "committed") {
		t.Error("Converged disagrees with the statuses")
	}
	// A cleared status removes the device.
	pub("dev-3", nil)
	c2 := connect(t, b.URL(), "", "", "")
	v2 := NewFleetView()
	if err := Subscribe(ctx, c2, []string{protocol.StatusFilter}, func(topic string, payload []byte) { v2.Update(topic, payload) }); err != nil {
		t.Fatal(err)
	}
	if n := len(v2.Devices()); n != 2 {
		t.Fatalf("%d devices after clearing dev-3, want 2", n)
	}
}

func TestBrokerRefusesOpenNetworkListener(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:1883", ":1883", "192.0.2.1:1883"} {
		_, err := StartBroker(BrokerOptions{Listen: addr, DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "without authentication") {
			t.Errorf("listen %s without auth: err %v", addr, err)
		}
	}
}

func TestFilterCovers(t *testing.T) {
	cases := []struct {
		p, f string
		want bool
	}{
		{"a/#", "a/b/c", true},
		{"a/#", "a", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/+/c", true},
		{"a/b/c", "a/+/c", false},
		{"a/+", "a/#", false},
		{"a/#", "a/#", true},
		{"#", "$SYS/x", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
	}
	for _, c := range cases {
		if got := filterCovers(c.p, c.f); got != c.want {
			t.Errorf("filterCovers(%q, %q) = %v", c.p, c.f, got)
		}
	}
}

// A redelivered malformed retained status counts once, and a later good
// message on the same topic clears it.
func TestStatusViewMalformedCountsTopics(t *testing.T) {
	v := NewFleetView()
	topic, err := protocol.StatusTopic("dev-9")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := v.Update(topic, []byte("{broken")); err == nil {
			t.Fatal("malformed status accepted")
		}
	}
	if got := v.Summary().Dropped; got != 1 {
		t.Fatalf("dropped %d, want 1 topic", got)
	}
	good, err := (&protocol.DeviceStatus{Schema: 1, Device: "dev-9", Time: time.Now(), Online: true}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Update(topic, good); err != nil {
		t.Fatal(err)
	}
	if s := v.Summary(); s.Dropped != 0 || s.Devices != 1 {
		t.Fatalf("summary after a good message: %+v", s)
	}
}

// TestPublishRepublishesLostChunk: a chunk the broker acknowledged but no
// longer holds when it is read back (here another client clears it right
// after the last acknowledgement, as a NATS cluster that loses a retained
// message while it elects a leader does) is published again before the
// envelope; the envelope then goes out and every chunk is held.
func TestPublishRepublishesLostChunk(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	r := makeBundle(t, t.TempDir(), "hello", "1.0.0", 1, 200_000)
	op := connect(t, b.URL(), "", "", "")
	other := connect(t, b.URL(), "", "", "")
	lost, _ := protocol.ChunkTopic("hello", r.m.Payload.SHA256, 2)
	res, err := PublishBundle(context.Background(), op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable", InFlight: 1,
		Progress: func(done, total int64) {
			if done == total {
				if err := wait(context.Background(), other.Publish(lost, 1, true, []byte{}), time.Minute); err != nil {
					t.Errorf("clear %s: %v", lost, err)
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Republished != 1 {
		t.Errorf("republished %d chunks, want 1 (chunk 2)", res.Republished)
	}
	filter, _ := protocol.ChunksFilter("hello", r.m.Payload.SHA256)
	snap, err := Snapshot(context.Background(), op, []string{filter})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap) != len(r.m.Payload.Chunks) || len(snap[lost]) == 0 {
		t.Fatalf("after publish the broker holds %d of %d chunks (chunk 2: %d bytes)", len(snap), len(r.m.Payload.Chunks), len(snap[lost]))
	}
}
