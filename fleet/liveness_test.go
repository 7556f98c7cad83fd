package fleet

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// feed gives the view a device's status and presence as the broker
// delivers them (strictly parsed, like any device message).
func feed(t *testing.T, v *FleetView, id string, status time.Time, online bool, presence time.Time) {
	t.Helper()
	st := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: id, Time: status, Online: true,
		Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", Sequence: 1, State: "committed"}}}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	topic, _ := protocol.StatusTopic(id)
	if err := v.Update(topic, b); err != nil {
		t.Fatal(err)
	}
	p := &protocol.Presence{Schema: protocol.MQTTSchemaVersion, Device: id, Online: online, Time: presence}
	if b, err = p.Marshal(); err != nil {
		t.Fatal(err)
	}
	topic, _ = protocol.PresenceTopic(id)
	if err := v.Update(topic, b); err != nil {
		t.Fatal(err)
	}
}

// TestLivenessStale: a device whose presence still says online but from
// which nothing was heard for longer than three status heartbeats (its
// will died with a broker node) is offline, and the table says why; the
// last contact is the later of the status and presence times; a device
// whose will arrived is offline as before; the limit can be changed.
func TestLivenessStale(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	v := NewFleetView()
	v.SetStaleAfter(0, func() time.Time { return now }) // the default limit, a fixed clock
	feed(t, v, "silent", now.Add(-20*time.Minute), true, now.Add(-25*time.Minute))
	feed(t, v, "alive", now.Add(-4*time.Minute), true, now.Add(-30*time.Minute))
	feed(t, v, "presence-newer", now.Add(-40*time.Minute), true, now.Add(-time.Minute))
	feed(t, v, "will", now.Add(-3*time.Minute), false, now.Add(-3*time.Minute))
	want := map[string]bool{"silent": false, "alive": true, "presence-newer": true, "will": false}
	for _, d := range v.Devices() {
		if d.Online != want[d.Device] {
			t.Errorf("%s: online = %v, want %v (last contact %s)", d.Device, d.Online, want[d.Device], now.Sub(d.Time))
		}
	}
	if s := v.Summary(); s.Offline != 2 {
		t.Errorf("summary counts %d offline, want 2 (silent, will)", s.Offline)
	}
	if got := v.Silent(); len(got) != 1 || got["silent"] != 20*time.Minute {
		t.Errorf("Silent() = %v, want silent for 20m", got)
	}
	var out bytes.Buffer
	v.WriteTable(&out, now)
	for _, line := range strings.Split(out.String(), "\n") {
		switch {
		case strings.HasPrefix(line, "silent "):
			if !strings.Contains(line, "offline (no contact for 20m)") {
				t.Errorf("the silent device's line does not say why it is offline: %q", line)
			}
		case strings.HasPrefix(line, "will "):
			if !strings.Contains(line, "offline 3m ago") || strings.Contains(line, "no contact") {
				t.Errorf("a device whose will arrived: %q", line)
			}
		case strings.HasPrefix(line, "alive "):
			if strings.Contains(line, "offline") {
				t.Errorf("a device heard from 4 minutes ago shows offline: %q", line)
			}
		}
	}
	// Exactly at the limit the device is still online; past it, not.
	feed(t, v, "edge", now.Add(-DefaultStaleAfter), true, now.Add(-DefaultStaleAfter))
	feed(t, v, "past", now.Add(-DefaultStaleAfter-time.Second), true, now.Add(-DefaultStaleAfter-time.Second))
	for _, d := range v.Devices() {
		if (d.Device == "edge" && !d.Online) || (d.Device == "past" && d.Online) {
			t.Errorf("%s: online = %v at %s since the last contact (limit %s)", d.Device, d.Online, now.Sub(d.Time), DefaultStaleAfter)
		}
	}
	// A shorter limit for tests, and off.
	v.SetStaleAfter(time.Minute, func() time.Time { return now })
	for _, d := range v.Devices() {
		if d.Device == "alive" && d.Online {
			t.Error("alive (4m) is online with a 1m limit")
		}
	}
	v.SetStaleAfter(-1, func() time.Time { return now })
	for _, d := range v.Devices() {
		if d.Device == "silent" && !d.Online {
			t.Error("silent is offline with the check turned off")
		}
	}
	if DefaultStaleAfter != 3*StatusHeartbeat || StatusHeartbeat != 5*time.Minute {
		t.Errorf("DefaultStaleAfter = %s; the documented limit is 3 × 5m", DefaultStaleAfter)
	}
}
