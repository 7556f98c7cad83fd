package agent

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func mustSchedule(t *testing.T, zone string, windows ...string) *Schedule {
	t.Helper()
	m := &MaintenanceConfig{Windows: windows, Timezone: zone}
	if err := m.validate(); err != nil {
		t.Fatal(err)
	}
	return m.Schedule()
}

func TestWindowParse(t *testing.T) {
	for _, c := range []struct {
		in, out string
		days    string // days set, Sun..Sat as 0/1
	}{
		{"Mon-Fri 02:00-04:00", "Mon,Tue,Wed,Thu,Fri 02:00-04:00", "0111110"},
		{"sat,SUN 22:00-06:00", "Sat,Sun 22:00-06:00", "1000001"},
		{"03:00-05:00", "03:00-05:00", "1111111"},
		{"Fri-Mon 0:30-24:00", "Mon,Fri,Sat,Sun 00:30-24:00", "1100011"},
		{"Wed 23:59-00:01", "Wed 23:59-00:01", "0001000"},
	} {
		w, err := ParseWindow(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		var got strings.Builder
		for _, d := range w.Days {
			got.WriteString(map[bool]string{true: "1", false: "0"}[d])
		}
		if w.String() != c.out || got.String() != c.days {
			t.Errorf("%q parsed as %q days %s, want %q days %s", c.in, w, got.String(), c.out, c.days)
		}
	}
	for _, c := range []struct{ in, says string }{
		{"", "empty"},
		{"Mon-Fri", "no time range"},
		{"Mon-Fri 02:00 04:00", "one space"},
		{"Mun 02:00-04:00", `"Mun" is not a day`},
		{"Mon- 02:00-04:00", `"" is not a day`},
		{"02:00-25:00", "not a time of day"},
		{"24:00-02:00", "24:00 only as an end"},
		{"02:60-03:00", "not a time of day"},
		{"2-4", "no time range HH:MM-HH:MM"}, {"2:0-4:00", "not a time HH:MM"},
		{"02:00-02:00", "empty (use 00:00-24:00"},
	} {
		_, err := ParseWindow(c.in)
		if err == nil || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "Mon-Fri 02:00-04:00") {
			t.Errorf("%q: %v, want an error saying %q with an example", c.in, err, c.says)
		}
	}
}

func TestWindowOpenAndNext(t *testing.T) {
	s := mustSchedule(t, "+02:00", "Mon-Fri 02:00-04:00", "Sat 22:00-06:00")
	at := func(v string) time.Time {
		tm, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, c := range []struct {
		now  string
		open bool
		next string
	}{
		{"2026-12-07T02:30:00+02:00", true, "2026-12-07T02:30:00+02:00"},  // Monday inside
		{"2026-12-07T00:30:00Z", true, "2026-12-07T00:30:00Z"},            // the same in UTC
		{"2026-12-07T04:00:00+02:00", false, "2026-12-08T02:00:00+02:00"}, // end is exclusive
		{"2026-12-11T05:00:00+02:00", false, "2026-12-12T22:00:00+02:00"}, // Friday after: Saturday night
		{"2026-12-13T05:59:00+02:00", true, "2026-12-13T05:59:00+02:00"},  // Sunday morning: Saturday's window
		{"2026-12-13T06:00:00+02:00", false, "2026-12-14T02:00:00+02:00"}, // then Monday
	} {
		now := at(c.now)
		if got := s.Open(now); got != c.open {
			t.Errorf("%s: open %v, want %v", c.now, got, c.open)
		}
		if got := s.NextOpen(now); !got.Equal(at(c.next)) {
			t.Errorf("%s: next opening %s, want %s", c.now, got, c.next)
		}
	}
}

// TestWindowDST: a Berlin window is read in Berlin time on both sides of
// a daylight saving change.
func TestWindowDST(t *testing.T) {
	if _, err := time.LoadLocation("Europe/Berlin"); err != nil {
		t.Skipf("SKIPPED: this machine has no zoneinfo for Europe/Berlin (install tzdata): %v", err)
	}
	s := mustSchedule(t, "Europe/Berlin", "02:00-04:00")
	// Sat 2026-03-28 02:00 CET = 01:00Z; Sun 29 DST starts at 01:00Z
	// (02:00 CET → 03:00 CEST); Mon 30 02:00 CEST = 00:00Z.
	cases := []struct{ now, next string }{
		{"2026-03-27T12:00:00Z", "2026-03-28T01:00:00Z"},
		{"2026-03-29T05:00:00Z", "2026-03-30T00:00:00Z"},
		{"2026-10-23T12:00:00Z", "2026-10-24T00:00:00Z"}, // Sat 24 Oct 02:00 CEST
		{"2026-10-25T12:00:00Z", "2026-10-26T01:00:00Z"}, // Mon 02:00 CET
	}
	for _, c := range cases {
		now, _ := time.Parse(time.RFC3339, c.now)
		want, _ := time.Parse(time.RFC3339, c.next)
		if got := s.NextOpen(now); !got.Equal(want) {
			t.Errorf("after %s the window opens %s, want %s", c.now, got.UTC(), c.next)
		}
	}
}

func TestWindowZones(t *testing.T) {
	for _, z := range []string{"", "UTC", "+02:00", "-0530", "+2"} {
		if _, err := LoadZone(z); err != nil {
			t.Errorf("zone %q: %v", z, err)
		}
	}
	loc, _ := LoadZone("-05:30")
	if _, off := time.Date(2026, 1, 1, 0, 0, 0, 0, loc).Zone(); off != -(5*3600 + 30*60) {
		t.Errorf("-05:30 is %d s east", off)
	}
	for _, z := range []string{"Mars/Olympus", "+25:00", "+02:0x", "++02"} {
		_, err := LoadZone(z)
		if err == nil || !strings.Contains(err.Error(), "tzdata") || !strings.Contains(err.Error(), `"+02:00"`) {
			t.Errorf("zone %q: %v, want an error suggesting tzdata or a fixed offset", z, err)
		}
	}
}

func TestConfigLabelsAndMaintenance(t *testing.T) {
	good := "device_id: d\ndata_dir: /var/lib/edgefleet\ntrusted_keys: [/k.pub]\napps:\n  - name: hello\n    path: /opt/hello/bin/hello\n"
	cfg, err := ParseConfig([]byte(good + "labels: {site: berlin, hw: rev2}\nmaintenance: {window: \"Mon-Fri 02:00-04:00\", windows: [\"Sat,Sun 22:00-06:00\"], timezone: \"+01:00\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Labels.String() != "hw=rev2,site=berlin" {
		t.Errorf("labels %v", cfg.Labels)
	}
	s := cfg.Maintenance.Schedule()
	if s == nil || len(s.Windows) != 2 || s.String() != "Mon,Tue,Wed,Thu,Fri 02:00-04:00; Sat,Sun 22:00-06:00 (+01:00)" {
		t.Fatalf("schedule %v", s)
	}
	if err := cfg.Validate(); err != nil || cfg.Maintenance.Schedule() != s {
		t.Errorf("a second Validate changed the schedule: %v", err)
	}
	for _, bad := range []struct{ yaml, says string }{
		{"labels: {Site: berlin}\n", `label key "Site": use lower-case letters`},
		{"labels: {site: \"Berlin Mitte\"}\n", `label site value "Berlin Mitte"`},
		{"labels: [site]\n", "line 7: cannot unmarshal"},
		{"maintenance: {timezone: UTC}\n", "maintenance needs a window"},
		{"maintenance: {window: \"Mon-Fry 02:00-04:00\"}\n", `"Fry" is not a day`},
		{"maintenance: {window: \"02:00-04:00\", timezone: Europe/Nowhere}\n", "install the tzdata package"},
		{"maintenance: {window: \"02:00-04:00\", when: now}\n", "when"},
	} {
		_, err := ParseConfig([]byte(good + bad.yaml))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("config %q: %v, want ErrConfig saying %q", bad.yaml, err, bad.says)
		}
	}
}

func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"Mon-Fri 02:00-04:00", "Sat,Sun 22:00-06:00", "03:00-05:00", "Fri-Mon 00:00-24:00", "Mon 1:00-1:01", "x", "Mon-Fri 02:00-04:00 UTC"} {
		f.Add(s)
	}
	s := &Schedule{Loc: time.FixedZone("+01:00", 3600)}
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, in string) {
		w, err := ParseWindow(in)
		if err != nil {
			return
		}
		again, err := ParseWindow(w.String())
		if err != nil || again != w {
			t.Fatalf("%q → %q does not parse back the same: %v", in, w, err)
		}
		s.Windows = []Window{w}
		next := s.NextOpen(now)
		if next.Before(now) || !s.Open(next) {
			t.Fatalf("%q: next opening %s after %s is not open", in, next, now)
		}
	})
}
