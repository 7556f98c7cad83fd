package devsim

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

func setup(t *testing.T) (*fleet.Broker, *protocol.Manifest, *protocol.Keyring) {
	t.Helper()
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	exe := make([]byte, 300<<10)
	rand.Read(exe)
	m, payload := testkit.Manifest(t, testkit.Spec{App: "demo", Version: "1.0.0", Sequence: 1, Exe: exe,
		Target: testkit.Target{GOARCH: "amd64"}, Encoding: protocol.EncodingNone, ChunkSize: protocol.MinChunkSize, NoProbe: true,
		ELF: &protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}})
	path := filepath.Join(t.TempDir(), "demo.efb")
	if err := os.WriteFile(path, testkit.Sign(t, m, payload, priv), 0o600); err != nil {
		t.Fatal(err)
	}
	kr := protocol.NewKeyring(pub)
	op, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: b.URL(), ClientID: "op"})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Disconnect(100)
	if _, err := fleet.PublishBundle(context.Background(), op, path, fleet.PublishOptions{Keyring: kr, Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
	return b, m, kr
}

// Simulated devices on the embedded broker fetch every chunk, verify it,
// and leave a valid retained status naming the release.
func TestSimulatedDevicesConverge(t *testing.T) {
	b, m, kr := setup(t)
	r, err := Run(t.Context(), Options{Broker: b.URL(), Keyring: kr, Channel: "stable", App: "demo", Devices: 30, Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Done != 30 || r.Failed != 0 || r.BadChunks != 0 {
		t.Fatalf("done %d failed %d bad chunks %d: %v", r.Done, r.Failed, r.BadChunks, r.Errors)
	}
	for _, x := range r.Results {
		if x.Chunks != len(m.Payload.Chunks) || x.Bytes != m.Payload.Size {
			t.Errorf("%s: %d chunks, %d bytes; want %d, %d", x.Device, x.Chunks, x.Bytes, len(m.Payload.Chunks), m.Payload.Size)
		}
	}
	if r.P50 <= 0 || r.P99 < r.P50 || r.PerMinute <= 0 {
		t.Errorf("report: p50 %s p99 %s per minute %.0f", r.P50, r.P99, r.PerMinute)
	}
	op, err := fleet.Connect(t.Context(), fleet.ClientOptions{Broker: b.URL(), ClientID: "view"})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Disconnect(100)
	snap, err := fleet.Snapshot(t.Context(), op, []string{protocol.StatusFilter})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap) != 30 {
		t.Fatalf("%d retained statuses, want 30", len(snap))
	}
	for topic, raw := range snap {
		st, err := protocol.ParseStatus(raw)
		if err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
		if len(st.Apps) != 1 || st.Apps[0].Version != m.Version {
			t.Errorf("%s: status %+v", topic, st.Apps)
		}
	}
}

// Devices that do not trust the release's key fail, each with the reason.
func TestSimulatedDevicesRefuseUntrustedRelease(t *testing.T) {
	b, _, _ := setup(t)
	other, _, _ := protocol.GenerateKey()
	r, err := Run(t.Context(), Options{Broker: b.URL(), Keyring: protocol.NewKeyring(other), Channel: "stable", App: "demo", Devices: 5})
	if err != nil {
		t.Fatal(err)
	}
	if r.Done != 0 || r.Failed != 5 {
		t.Fatalf("done %d failed %d, want 0 and 5", r.Done, r.Failed)
	}
	for e := range r.Errors {
		if !strings.Contains(strings.ToLower(e), "key") && !strings.Contains(strings.ToLower(e), "signature") {
			t.Errorf("failure does not say the key or signature is wrong: %s", e)
		}
	}
}
