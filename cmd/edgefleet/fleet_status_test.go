package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// status -o wide, status DEVICE and -o json against the embedded broker:
// the whole error with the version that failed, and no colour on a pipe.
func TestStatusViews(t *testing.T) {
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url := b.URL()
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url, ClientID: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	why := "hello 0.3.0 failed its health check on trial: exit status 1; output: | connecting to sensor bus /dev/i2c-1: no such device"
	st := &protocol.DeviceStatus{Schema: 1, Device: "pi-1", Profile: "linux-armv6", CPU: "armv6 (vfp)", AgentVersion: "1.2.0", Channel: "stable",
		Time: time.Now().UTC(), Online: true,
		Apps: []protocol.AppReport{{App: "hello", Version: "0.2.0", Sequence: 2, State: "rolled-back", LastError: why}}}
	raw, _ := st.Marshal()
	c.Publish("edgefleet/v1/device/pi-1/status", 1, true, raw).Wait()
	c.Disconnect(100)

	code, out, _ := runCLI(t, "status", "--broker", url)
	if code != 0 || !strings.Contains(out, "0.2.0") || !strings.Contains(out, "rolled-back") || !strings.Contains(out, "hello 0.3.0 failed its health check") || strings.Contains(out, "no such device") {
		t.Fatalf("status (clipped error): %d\n%s", code, out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Fatalf("colour on a pipe:\n%q", out)
	}
	code, out, _ = runCLI(t, "status", "-o", "wide", "--broker", url)
	if code != 0 || !strings.Contains(out, why) || !strings.Contains(out, "AGENT") || !strings.Contains(out, "1.2.0") || !strings.Contains(out, "armv6 (vfp)") {
		t.Fatalf("status -o wide: %d\n%s", code, out)
	}
	// Flags after the argument, as everywhere.
	code, out, _ = runCLI(t, "status", "pi-1", "--broker", url)
	for _, want := range []string{"Device:", "pi-1", "Agent:", "1.2.0", "App hello:", "0.2.0 (sequence 2)", "rolled-back", "Error:", why} {
		if !strings.Contains(out, want) {
			t.Errorf("status pi-1 lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Fatalf("status pi-1: exit %d", code)
	}
	code, out, _ = runCLI(t, "status", "pi-1", "-o", "json", "--broker", url)
	if code != 0 || !strings.Contains(out, `"device": "pi-1"`) || !strings.Contains(out, "no such device") {
		t.Fatalf("status pi-1 -o json: %d\n%s", code, out)
	}
	code, _, errs := runCLI(t, "status", "pi-9", "--broker", url)
	if code != 1 || !strings.Contains(errs, `no status from device "pi-9"`) || !strings.Contains(errs, "devices with a status: pi-1") {
		t.Fatalf("status pi-9: %d\n%s", code, errs)
	}
	if code, _, errs := runCLI(t, "status", "-o", "yaml", "--broker", url); code != 2 || !strings.Contains(errs, "want wide or json") {
		t.Fatalf("-o yaml: %d %s", code, errs)
	}
}

// Colour keeps the columns aligned: every state cell carries escape
// sequences of the same length.
func TestStatusColorAligned(t *testing.T) {
	v := fleet.NewFleetView()
	now := time.Now().UTC()
	for _, s := range []protocol.DeviceStatus{
		{Schema: 1, Device: "a", Time: now, Online: true, Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", State: "committed"}}},
		{Schema: 1, Device: "b", Time: now, Online: true, Apps: []protocol.AppReport{{App: "hello", Version: "0.9.0", State: "rolled-back", LastError: "x"}}},
	} {
		raw, _ := s.Marshal()
		if err := v.Update("edgefleet/v1/device/"+s.Device+"/status", raw); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	v.WriteTableWith(&buf, now, fleet.TableOptions{Color: true})
	out := buf.String()
	if !strings.Contains(out, "\x1b[31mrolled-back\x1b[0m") || !strings.Contains(out, "\x1b[32mcommitted\x1b[0m") {
		t.Fatalf("no colours:\n%q", out)
	}
	lines := strings.Split(out, "\n")
	col := func(l, s string) int { return strings.Index(l, s) }
	if a, b := col(lines[1], " ago"), col(lines[2], " ago"); a < 0 || a != b {
		t.Errorf("columns after the state are not aligned:\n%s", out)
	}
}
