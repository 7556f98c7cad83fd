package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func runCLI(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), &cliEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}, args)
	return code, out.String(), errb.String()
}

// TestFleetCLI publishes, assigns, shows status and retires against the
// embedded broker, in process.
func TestFleetCLI(t *testing.T) {
	dir := t.TempDir()
	pub, priv, _ := protocol.GenerateKey()
	pubText, _ := pub.MarshalText()
	pubPath := filepath.Join(dir, "release.pub")
	os.WriteFile(pubPath, pubText, 0o644)
	exe := make([]byte, 50_000)
	rand.Read(exe)
	p, _ := protocol.DescribePayload(bytes.NewReader(exe), protocol.EncodingNone, protocol.MinChunkSize)
	m := &protocol.Manifest{Schema: 1, App: "hello", Version: "1.0.0", Sequence: 1, Created: time.Now().UTC(), Profile: "linux-amd64",
		Target:  protocol.Target{GOOS: "linux", GOARCH: "amd64", GOAMD64: "v1", ELF: protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}},
		Payload: p, Executable: protocol.Executable{Size: p.Size, SHA256: p.SHA256}}
	raw, sig, err := protocol.SignManifest(m, priv)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "hello_1.0.0_linux-amd64.efb")
	if err := protocol.WriteBundleFile(bundle, raw, sig, bytes.NewReader(exe), int64(len(exe)), m.Created); err != nil {
		t.Fatal(err)
	}

	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url := b.URL()

	code, out, errs := runCLI(t, "publish", "--broker", url, "--pub", pubPath, bundle)
	if code != 0 || !strings.Contains(out, "published hello 1.0.0 (sequence 1, linux-amd64) to channel stable: 13 chunks") || !strings.Contains(errs, "100%") {
		t.Fatalf("publish: %d\n%s\n%s", code, out, errs)
	}
	// pi-1 has not reported yet: --force.
	code, out, errs = runCLI(t, "assign", "--broker", url, "--device", "pi-1", "--pub", pubPath, "--quiet", "--force", bundle)
	if code != 0 || !strings.Contains(out, "to device pi-1") {
		t.Fatalf("assign: %d\n%s\n%s", code, out, errs)
	}
	// Usage errors.
	if code, _, _ := runCLI(t, "publish", "--broker", url, bundle); code != 2 {
		t.Errorf("publish without --pub: exit %d, want 2", code)
	}
	if code, _, _ := runCLI(t, "broker", "--listen", "0.0.0.0:0", "--data", dir); code != 1 {
		t.Errorf("broker on 0.0.0.0 without auth: exit %d, want 1", code)
	}

	// A device status, then the table and JSON.
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url, ClientID: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	st := &protocol.DeviceStatus{Schema: 1, Device: "pi-1", Profile: "linux-amd64", Time: time.Now().UTC(), Online: true,
		Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", Sequence: 1, State: "committed"}}}
	rawSt, _ := st.Marshal()
	c.Publish("edgefleet/v1/device/pi-1/status", 1, true, rawSt).Wait()
	c.Disconnect(100)
	code, out, _ = runCLI(t, "status", "--broker", url)
	if code != 0 || !strings.Contains(out, "pi-1") || !strings.Contains(out, "1 devices, 0 offline, 0 failed; hello 1.0.0: 1") {
		t.Fatalf("status: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "status", "--json", "--broker", url)
	if code != 0 || !strings.Contains(out, `"device": "pi-1"`) {
		t.Fatalf("status --json: %d\n%s", code, out)
	}

	code, out, errs = runCLI(t, "retire", "--broker", url, "hello", "1.0.0")
	if code != 0 || !strings.Contains(out, "retired hello 1.0.0: 2 release topics, 13 chunks removed") {
		t.Fatalf("retire: %d\n%s\n%s", code, out, errs)
	}
	if code, _, _ := runCLI(t, "retire", "--broker", url, "hello", "1.0.0"); code != 1 {
		t.Errorf("retiring again: exit %d, want 1 (nothing found)", code)
	}
}
