package fleet

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// A device writes its own status, so a compromised one chooses every free
// text field the operator's `edgefleet status` prints. Terminal escape
// sequences there could erase the table lines of other devices (hiding
// their failures) or retitle the terminal; bidi overrides could make one
// version read as another. The view shows such characters neutralised.
func TestStatusTableNeutralisesControlCharacters(t *testing.T) {
	hostile := map[string]any{
		"schema": 1, "device": "dev-evil", "cpu": "arm\x1b]0;owned\x07", "agent_version": "1.0\x1b[2J",
		"time": time.Now().UTC(), "online": true,
		"apps": []map[string]any{{
			"app": "hello", "version": "1.0.0\u202e", "state": "committed\x1b[1A\x1b[2K", "target": "2.0.0\x9b31m",
			"last_error": "fine\x1b[1A\x1b[2K\x1b[1A\x1b[2Kall good\nline two",
			"progress":   map[string]any{"step": "stage\x1b[K", "done": 1, "total": 2},
		}},
	}
	raw, err := json.Marshal(hostile)
	if err != nil {
		t.Fatal(err)
	}
	honest := &protocol.DeviceStatus{Schema: 1, Device: "dev-ok", Time: time.Now().UTC(), Online: true,
		Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", State: "failed", LastError: "probe failed"}}}
	ok, err := honest.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	v := NewFleetView()
	for topic, p := range map[string][]byte{"edgefleet/v1/device/dev-evil/status": raw, "edgefleet/v1/device/dev-ok/status": ok} {
		if err := v.Update(topic, p); err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
	}
	var out bytes.Buffer
	v.WriteTable(&out, time.Now())
	s := out.String()
	for _, r := range s {
		if r == '\n' {
			continue
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u202e' {
			t.Fatalf("the status table passes a control character %U from a device to the terminal:\n%q", r, s)
		}
	}
	if !strings.Contains(s, "probe failed") || !strings.Contains(s, "dev-ok") {
		t.Fatalf("the honest device's line is missing:\n%s", s)
	}
	if strings.Count(s, "\n") != 4 { // header, two devices, summary
		t.Fatalf("a device's fields broke the table's lines:\n%s", s)
	}
	// The status a device publishes is clean on the wire too.
	st := &protocol.DeviceStatus{Schema: 1, Device: "dev-1", CPU: "x\x1bc", Time: time.Now().UTC(),
		Apps: []protocol.AppReport{{App: "hello", LastError: "probe `x --version` exited with status 1; stderr: panic: boom\n\tgoroutine 1\x1b[0m"}}}
	b, err := st.Marshal()
	if err != nil {
		t.Fatalf("a last error with the app's output must still be reported: %v", err)
	}
	if bytes.ContainsAny(b, "\x1b") || bytes.Contains(b, []byte(`\u001b`)) || bytes.Contains(b, []byte(`\n`)) {
		t.Fatalf("the published status carries control characters: %s", b)
	}
}
