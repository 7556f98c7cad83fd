package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// opsFleet is an embedded broker, a TEST-ONLY key and a folder of
// bundles for the publish/assign/releases/status tests.
type opsFleet struct {
	t    *testing.T
	dir  string
	pub  string
	priv protocol.PrivateKey
	url  string
}

func newOpsFleet(t *testing.T) *opsFleet {
	t.Helper()
	dir := t.TempDir()
	pub, priv := testkit.Keys(t, dir)
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &opsFleet{t: t, dir: dir, pub: pub, priv: priv, url: b.URL()}
}

var elfOf = map[string]protocol.ELF{
	"amd64": {Class: 64, Machine: "EM_X86_64", Endian: "little"},
	"arm":   {Class: 32, Machine: "EM_ARM", Endian: "little"},
	"arm64": {Class: 64, Machine: "EM_AARCH64", Endian: "little"},
}

// bundle writes app_version_profile.efb (into sub of the fleet's folder)
// with random bytes signed for profile (linux-amd64, linux-armv6,
// linux-armv7, linux-arm64).
func (f *opsFleet) bundle(sub, app, version string, seq uint64, profile string) string {
	f.t.Helper()
	tg := map[string]testkit.Target{
		"linux-amd64": {GOARCH: "amd64"}, "linux-armv6": {GOARCH: "arm", GOARM: "6"},
		"linux-armv7": {GOARCH: "arm", GOARM: "7"}, "linux-arm64": {GOARCH: "arm64"},
	}[profile]
	exe := make([]byte, 20_000)
	rand.Read(exe)
	id := elfOf[tg.GOARCH]
	m, payload := testkit.Manifest(f.t, testkit.Spec{App: app, Version: version, Sequence: seq, Profile: profile, Target: tg, Exe: exe,
		ELF: &id, Encoding: protocol.EncodingNone, ChunkSize: protocol.MinChunkSize, NoProbe: true})
	path := filepath.Join(f.dir, sub, fmt.Sprintf("%s_%s_%s.efb", app, version, profile))
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, testkit.Sign(f.t, m, payload, f.priv), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// status publishes a retained device status, as an agent would.
func (f *opsFleet) status(st protocol.DeviceStatus) {
	f.t.Helper()
	st.Schema, st.Time, st.Online = protocol.MQTTSchemaVersion, time.Now().UTC(), true
	raw, err := st.Marshal()
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: f.url, ClientID: st.Device})
	if err != nil {
		f.t.Fatal(err)
	}
	defer c.Disconnect(100)
	topic, _ := protocol.StatusTopic(st.Device)
	if tok := c.Publish(topic, 1, true, raw); tok.Wait() && tok.Error() != nil {
		f.t.Fatal(tok.Error())
	}
}

func (f *opsFleet) run(args ...string) (int, string, string) {
	f.t.Helper()
	for i, a := range args {
		if a == "URL" {
			args[i] = f.url
		} else if a == "PUB" {
			args[i] = f.pub
		}
	}
	return runCLI(f.t, args...)
}

// catalog reads what the broker holds.
func (f *opsFleet) catalog() *fleet.Catalog {
	f.t.Helper()
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: f.url})
	if err != nil {
		f.t.Fatal(err)
	}
	defer c.Disconnect(100)
	cat, err := fleet.LoadCatalog(context.Background(), c, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return cat
}

func mustContain(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s: want %q in\n%s", what, w, got)
		}
	}
}

// TestPublishRefusesSequenceOfAnotherBuild: a sequence the broker holds
// for a different build of the app is refused on publish and on assign,
// naming the holder and the sequence to use; the same build again and the
// other profiles of one build pass.
func TestPublishRefusesSequenceOfAnotherBuild(t *testing.T) {
	f := newOpsFleet(t)
	amd := f.bundle("a", "hello", "1.0.0", 5, "linux-amd64")
	arm := f.bundle("a", "hello", "1.0.0", 5, "linux-arm64")
	if code, out, errs := f.run("publish", "--broker", "URL", "--pub", "PUB", "--quiet", amd, arm); code != 0 {
		t.Fatalf("publish of two profiles of one build: %d\n%s\n%s", code, out, errs)
	}
	// The same build again (a re-publish) is fine.
	if code, out, errs := f.run("publish", "--broker", "URL", "--pub", "PUB", "--quiet", amd); code != 0 {
		t.Fatalf("re-publish of the same bundle: %d\n%s\n%s", code, out, errs)
	}
	// A different build with the same sequence and profile, or the same
	// sequence with another version for another profile: refused, and
	// nothing is published (the good bundle of the batch neither).
	rebuilt := f.bundle("b", "hello", "1.0.0", 5, "linux-amd64")
	other := f.bundle("b", "hello", "1.0.1", 5, "linux-armv7")
	fresh := f.bundle("b", "hello", "1.0.2", 6, "linux-armv6")
	for _, tc := range []struct {
		bundle string
		want   []string
	}{
		{rebuilt, []string{"hello 1.0.0 (linux-amd64) has sequence 5", "channel stable (edgefleet/v1/release/stable/hello/linux-amd64/manifest) holds a different hello 1.0.0 build for linux-amd64", "--sequence 6"}},
		{other, []string{"hello 1.0.1 (linux-armv7) has sequence 5", "holds hello 1.0.0 (linux-amd64) with sequence 5", "--sequence 6"}},
	} {
		code, out, errs := f.run("publish", "--broker", "URL", "--pub", "PUB", "--channel", "beta", "--quiet", tc.bundle, fresh)
		if code != 1 {
			t.Fatalf("publish %s: exit %d, want 1\n%s\n%s", tc.bundle, code, out, errs)
		}
		mustContain(t, "publish refusal", errs, append(tc.want, "not publishing anything")...)
	}
	// Within one batch too.
	code, _, errs := f.run("publish", "--broker", "URL", "--pub", "PUB", "--channel", "beta", "--quiet", fresh, f.bundle("c", "hello", "1.0.2", 6, "linux-armv6"))
	if code != 1 {
		t.Fatalf("two builds of one sequence in a batch: exit %d, want 1\n%s", code, errs)
	}
	mustContain(t, "batch refusal", errs, "(in this batch)", "--sequence 7")
	if n := len(f.catalog().Releases); n != 2 {
		t.Errorf("the broker holds %d releases after the refusals, want the 2 first ones", n)
	}
	// Assign checks the same, and --force does not override it.
	f.status(protocol.DeviceStatus{Device: "pi-1", Profile: "linux-amd64", CPU: "amd64-v1"})
	code, _, errs = f.run("assign", "--broker", "URL", "--pub", "PUB", "--device", "pi-1", "--force", "--quiet", rebuilt)
	if code != 1 {
		t.Fatalf("assign of another build with a held sequence: exit %d, want 1\n%s", code, errs)
	}
	mustContain(t, "assign refusal", errs, "--sequence 6")
	if code, out, errs := f.run("assign", "--broker", "URL", "--pub", "PUB", "--device", "pi-1", "--quiet", amd); code != 0 {
		t.Fatalf("assign of the published build: %d\n%s\n%s", code, out, errs)
	}
	// Once retired everywhere, the sequence is free again.
	f.run("retire", "--broker", "URL", "hello", "1.0.0")
	if code, out, errs := f.run("publish", "--broker", "URL", "--pub", "PUB", "--quiet", rebuilt); code != 0 {
		t.Fatalf("publish after retire: %d\n%s\n%s", code, out, errs)
	}
}

// TestAssignChecksInput: every --device counts; an unknown device and a
// bundle the device's CPU cannot run are refused unless --force; one
// bundle per profile goes to the device of that profile; --clear of
// nothing says so.
func TestAssignChecksInput(t *testing.T) {
	f := newOpsFleet(t)
	v6 := f.bundle("", "hello", "1.1.0", 2, "linux-armv6")
	v7 := f.bundle("", "hello", "1.1.0", 2, "linux-armv7")
	f.status(protocol.DeviceStatus{Device: "pi-zero", CPU: "armv6 (vfp)"})
	f.status(protocol.DeviceStatus{Device: "pi-2", CPU: "armv7 (vfp, vfpv3, neon)", Profile: "linux-armv7"})
	f.status(protocol.DeviceStatus{Device: "pi-old", Profile: "linux-armv6"})

	// Two --device flags, two bundles: each gets its own.
	code, out, errs := f.run("assign", "--broker", "URL", "--pub", "PUB", "--quiet", "--device", "pi-zero", "--device", "pi-2", v6, v7)
	if code != 0 {
		t.Fatalf("assign to two devices: %d\n%s\n%s", code, out, errs)
	}
	mustContain(t, "assign output", out, "(sequence 2, linux-armv6) to device pi-zero", "(sequence 2, linux-armv7) to device pi-2")
	got := map[string]string{}
	for _, h := range f.catalog().Assignments {
		got[h.Device] = h.Manifest.Profile
	}
	if len(got) != 2 || got["pi-zero"] != "linux-armv6" || got["pi-2"] != "linux-armv7" {
		t.Errorf("assignments on the broker: %v, want pi-zero linux-armv6 and pi-2 linux-armv7", got)
	}

	// An armv7 build for an armv6 CPU (reported CPU, or only the profile).
	for _, dev := range []string{"pi-zero", "pi-old"} {
		code, _, errs = f.run("assign", "--broker", "URL", "--pub", "PUB", "--quiet", "--device", dev, v7)
		if code != 1 {
			t.Fatalf("armv7 build on %s: exit %d, want 1\n%s", dev, code, errs)
		}
		mustContain(t, "wrong CPU", errs, "device "+dev, "cannot run hello 1.1.0 for linux-armv7", "GOARM=7", "--force", "nothing was assigned")
	}
	// Unknown device, among known ones: nothing is assigned.
	code, _, errs = f.run("assign", "--broker", "URL", "--pub", "PUB", "--quiet", "--device", "pi-2", "--device", "pi-typo", v7)
	if code != 1 {
		t.Fatalf("unknown device: exit %d, want 1\n%s", code, errs)
	}
	mustContain(t, "unknown device", errs, "no device pi-typo has reported a status", "--force", "nothing was assigned")
	if n := len(f.catalog().Assignments); n != 2 {
		t.Errorf("%d assignments after refusals, want 2", n)
	}
	// --force assigns both, with warnings.
	code, out, errs = f.run("assign", "--broker", "URL", "--pub", "PUB", "--quiet", "--force", "--device", "pi-typo", "--device", "pi-zero", v7)
	if code != 0 {
		t.Fatalf("forced assign: %d\n%s\n%s", code, out, errs)
	}
	mustContain(t, "forced", errs, "warning (--force): no device pi-typo", "warning (--force): device pi-zero")
	mustContain(t, "forced", out, "to device pi-typo: 5 chunks", "to device pi-zero: chunks already sent")

	// --clear: what is assigned is cleared, what is not says so.
	code, out, errs = f.run("assign", "--broker", "URL", "--device", "pi-2", "--device", "pi-old", "--clear", "hello")
	if code != 0 {
		t.Fatalf("clear: %d\n%s\n%s", code, out, errs)
	}
	mustContain(t, "clear", out, "cleared the assignment of hello on pi-2")
	mustContain(t, "clear", errs, "pi-old has no assignment of hello: nothing to clear")
	code, _, errs = f.run("assign", "--broker", "URL", "--device", "pi-2", "--clear", "hello")
	if code != 1 || !strings.Contains(errs, "pi-2 has no assignment of hello") {
		t.Errorf("clearing twice: exit %d, want 1 and a message\n%s", code, errs)
	}
}

func TestCatalogJSONRoundTrip(t *testing.T) {
	f := newOpsFleet(t)
	f.run("publish", "--broker", "URL", "--pub", "PUB", "--quiet", f.bundle("", "hello", "1.0.0", 1, "linux-amd64"))
	b, err := json.Marshal(f.catalog())
	if err != nil || !strings.Contains(string(b), `"sequence":1`) {
		t.Fatalf("catalog JSON: %v %s", err, b)
	}
}

func connectOp(t *testing.T, url string) paho.Client {
	t.Helper()
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
