package fleet

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// A device chooses its own progress numbers: done above total, negative
// values and values whose percentage overflows int64 once printed as
// "-100%" or "200%". The operator's table shows 0..100% only.
func TestStatusTableClampsProgress(t *testing.T) {
	v := NewFleetView()
	cases := map[string][2]int64{
		"over":     {20, 10},
		"negative": {-10, 10},
		"overflow": {1 << 62, 1 << 62},
		"huge":     {(1 << 62) - 1, 1 << 62},
		"normal":   {3, 10},
	}
	for name, c := range cases {
		raw, _ := json.Marshal(map[string]any{
			"schema": 1, "device": "dev-" + name, "time": time.Now().UTC(), "online": true,
			"apps": []map[string]any{{"app": "hello", "version": "1.0.0", "state": "downloading",
				"progress": map[string]any{"step": "download", "done": c[0], "total": c[1]}}},
		})
		if err := v.Update("edgefleet/v1/device/dev-"+name+"/status", raw); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var out bytes.Buffer
	v.WriteTable(&out, time.Now())
	want := map[string]string{"over": "100", "negative": "0", "overflow": "100", "huge": "99", "normal": "30"}
	re := regexp.MustCompile(`download (-?\d+)%`)
	for _, line := range strings.Split(out.String(), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if n < 0 || n > 100 {
			t.Errorf("the table shows %d%%:\n%s", n, line)
		}
		for name, w := range want {
			if strings.HasPrefix(line, "dev-"+name+" ") && m[1] != w {
				t.Errorf("%s: %s%%, want %s%%", name, m[1], w)
			}
		}
	}
	if got := strings.Count(out.String(), "download "); got != len(cases) {
		t.Fatalf("%d progress cells, want %d:\n%s", got, len(cases), out.String())
	}
}

// Invisible and line-breaking characters (U+200B, U+2028, U+2029, U+FEFF,
// U+2060) from a device never reach the operator's terminal: a version
// "1.0.0<U+200B>" must not pass for "1.0.0", and U+2028 breaks lines in
// some terminals and log viewers.
func TestStatusTableNeutralisesInvisibleCharacters(t *testing.T) {
	raw, _ := json.Marshal(map[string]any{
		"schema": 1, "device": "dev-evil", "time": time.Now().UTC(), "online": true, "cpu": "arm\u2028vfp",
		"apps": []map[string]any{{"app": "hello", "version": "1.0.0\u200b", "state": "committed\ufeff", "target": "2.0.0\u2060",
			"last_error": "all\u2029good\u200bhere"}},
	})
	v := NewFleetView()
	if err := v.Update("edgefleet/v1/device/dev-evil/status", raw); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	v.WriteTable(&out, time.Now())
	s := out.String()
	for _, r := range "\u200b\u2028\u2029\ufeff\u2060" {
		if strings.ContainsRune(s, r) {
			t.Fatalf("the status table passes %U from a device to the terminal:\n%q", r, s)
		}
	}
	if !strings.Contains(s, "1.0.0?") || !strings.Contains(s, "all good?here") {
		t.Fatalf("the neutralised text is not shown as such:\n%s", s)
	}
}

// TestStatusTableShowsWindow: a device whose download waits for its
// maintenance window says in the table when it will install.
func TestStatusTableShowsWindow(t *testing.T) {
	now := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	opens := time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)
	st := &protocol.DeviceStatus{Schema: 1, Device: "pi-1", Time: now, Online: true,
		Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", State: "committed", Target: "1.1.0", WindowOpens: &opens}}}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	v := NewFleetView()
	if err := v.Update("edgefleet/v1/device/pi-1/status", b); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	v.WriteTable(&out, now)
	if !strings.Contains(out.String(), "installs when its window opens in 3h00m (Wed 02:00 UTC)") {
		t.Fatalf("the table does not say when the window opens:\n%s", out.String())
	}
}
