package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// TestCatalogOnBroker reads releases, assignments, a rollout and
// malformed messages from the embedded broker, and checks sequences
// against them.
func TestCatalogOnBroker(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	op := connect(t, b.URL(), "", "", "op")
	dir := t.TempDir()
	r1 := makeBundle(t, dir, "hello", "1.0.0", 3, 9000)
	ctx := context.Background()
	if _, err := PublishBundle(ctx, op, r1.path, PublishOptions{Keyring: r1.kr, Device: "pi-7"}); err != nil {
		t.Fatal(err)
	}
	// Malformed: garbage envelope, an envelope whose manifest names
	// another app, a bad rollout; none stops the catalog.
	env1, _ := protocol.MarshalEnvelope(mustRaw(t, r1), []byte("sig"))
	for topic, payload := range map[string][]byte{
		"edgefleet/v1/release/stable/other/linux-amd64/manifest": env1,
		"edgefleet/v1/release/stable/hello/linux-arm64/manifest": []byte("{not json"),
		"edgefleet/v1/rollout/stable/hello":                      []byte(`{"schema":1,"id":"x"}`),
	} {
		op.Publish(topic, 1, true, payload).Wait()
	}
	ro := &protocol.Rollout{Schema: 1, ID: "hello-9", Channel: "beta", App: "hello", Version: "1.2.0", Sequence: 9,
		Profiles: []string{"linux-amd64"}, Waves: []protocol.Wave{{Count: 1}, {Percent: 100}}, MaxFailures: 0.1, MinExecuted: 1,
		State: protocol.RolloutRunning, Cuts: []uint64{1}, Cut: 1, WaveStarted: []time.Time{time.Now().UTC()}, Created: time.Now().UTC(), Updated: time.Now().UTC()}
	raw, err := ro.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	op.Publish("edgefleet/v1/rollout/beta/hello", 1, true, raw).Wait()

	cat, err := LoadCatalog(ctx, op, r1.kr)
	if err != nil {
		t.Fatal(err)
	}
	if len(cat.Assignments) != 1 || cat.Assignments[0].Device != "pi-7" || !cat.Assignments[0].Verified {
		t.Fatalf("assignments: %+v", cat.Assignments)
	}
	if len(cat.Releases) != 2 || cat.Releases[0].Manifest != nil || cat.Releases[1].Manifest != nil {
		t.Fatalf("releases: want 2 malformed, got %+v", cat.Releases)
	}
	if !strings.Contains(cat.Releases[1].Malformed, "the manifest is for app hello, the topic for other") {
		t.Errorf("mismatched app: %q", cat.Releases[1].Malformed)
	}
	for _, r := range cat.Rollouts {
		t.Logf("rollout %s: %s", r.Topic, r.Malformed)
	}
	if len(cat.Rollouts) != 2 || cat.Malformed() != 3 {
		t.Fatalf("rollouts %d, malformed %d: want 2 and 3", len(cat.Rollouts), cat.Malformed())
	}
	// The rollout's sequence counts for the next one.
	if n := cat.NextSequence("hello"); n != 10 {
		t.Errorf("NextSequence = %d, want 10 (rollout of 9)", n)
	}
	// A rebuild with the device's sequence is refused, naming the device.
	r2 := makeBundle(t, t.TempDir(), "hello", "1.0.0", 3, 9000)
	err = cat.CheckSequence(r2.m, "")
	if !errors.Is(err, ErrSequenceConflict) || !strings.Contains(err.Error(), "device pi-7 (edgefleet/v1/device/pi-7/desired/hello)") ||
		!strings.Contains(err.Error(), "--sequence 10") {
		t.Errorf("CheckSequence of a rebuild: %v", err)
	}
	if err := cat.CheckSequence(r1.m, r1.m.Payload.SHA256); err != nil {
		t.Errorf("CheckSequence of the same build: %v", err)
	}
	other := *r2.m
	other.Profile = "linux-arm64"
	if err := cat.CheckSequence(&other, ""); err != nil {
		t.Errorf("another profile of the same version and sequence: %v", err)
	}
	other.Version = "1.0.1"
	if err := cat.CheckSequence(&other, ""); !errors.Is(err, ErrSequenceConflict) {
		t.Errorf("another version with a held sequence, on another profile: %v", err)
	}
	// Without a keyring nothing is verified; with a foreign key it is
	// listed as unverified, not dropped.
	pub2, _, _ := protocol.GenerateKey()
	cat2, err := LoadCatalog(ctx, op, protocol.NewKeyring(pub2))
	if err != nil || len(cat2.Assignments) != 1 || cat2.Assignments[0].Verified || cat2.Assignments[0].Unverified == "" || cat2.Assignments[0].Manifest == nil {
		t.Errorf("foreign keyring: %v %+v", err, cat2.Assignments)
	}
}

func mustRaw(t *testing.T, r testRelease) []byte {
	t.Helper()
	raw, err := r.m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func FuzzNewCatalog(f *testing.F) {
	dir := f.TempDir()
	r := makeBundle(f, dir, "hello", "1.0.0", 3, 5000)
	raw, _ := r.m.Marshal()
	env, _ := protocol.MarshalEnvelope(raw, []byte("sig"))
	f.Add("edgefleet/v1/release/stable/hello/linux-amd64/manifest", env)
	f.Add("edgefleet/v1/device/pi-1/desired/hello", env)
	f.Add("edgefleet/v1/rollout/stable/hello/linux-amd64/manifest", env)
	f.Add("edgefleet/v1/rollout/stable/hello", []byte(`{"schema":1}`))
	f.Add("edgefleet/v1/bogus", []byte("x"))
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		cat := NewCatalog(map[string][]byte{topic: payload}, r.kr)
		n := len(cat.Releases) + len(cat.Assignments) + len(cat.Candidates) + len(cat.Rollouts) + len(cat.Other)
		if len(payload) > 0 && n != 1 {
			t.Fatalf("one message listed %d times", n)
		}
		for _, h := range cat.All() {
			if h.Manifest.App != h.App {
				t.Fatalf("a manifest for %s listed under app %s", h.Manifest.App, h.App)
			}
			cat.CheckSequence(h.Manifest, "")
		}
		cat.NextSequence("hello")
	})
}
