package agent

// Maintenance windows (agent config `maintenance:`, DESIGN.md decision 10,
// SPEC.md §8.8). The agent downloads a release at any time but installs a
// release received over MQTT only inside one of its windows, so the rule
// holds while the device is offline. A sideload (a field engineer's
// explicit action) installs at once. Windows are computed in the
// configured location, day by day, so they follow daylight saving time.
// The agent does not embed time/tzdata (it would add ~450 KB to every
// device binary): a named zone needs the device's zoneinfo (package
// tzdata), or a fixed offset such as "+02:00" or "UTC" is used.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// MaxWindows bounds the maintenance windows of one device.
const MaxWindows = 16

// windowExample is appended to window syntax errors.
const windowExample = `write e.g. "Mon-Fri 02:00-04:00", "Sat,Sun 22:00-06:00" or "03:00-05:00" (every day)`

// MaintenanceConfig is the agent config's `maintenance:` section: when
// the agent may install a release received over MQTT. Without it the
// agent installs at once.
type MaintenanceConfig struct {
	// Window is one window, e.g. "Mon-Fri 02:00-04:00": optional days
	// (Mon..Sun, ranges like Mon-Fri or Fri-Mon, lists like Sat,Sun; none
	// means every day), then HH:MM-HH:MM. A window whose end is not after
	// its start crosses midnight ("22:00-06:00"); its days are the days
	// it starts on. "00:00-24:00" is a whole day.
	Window string `yaml:"window,omitempty"`
	// Windows are more windows of the same syntax; the agent installs
	// inside any of them.
	Windows []string `yaml:"windows,omitempty"`
	// Timezone the windows are read in: an IANA name such as
	// "Europe/Berlin" (needs the device's zoneinfo: install tzdata), a
	// fixed offset such as "+02:00" or "-05:30", or "UTC". Default: the
	// device's local time zone (/etc/localtime; UTC without one).
	Timezone string `yaml:"timezone,omitempty"`

	sched *Schedule // parsed by validate
}

// Schedule is a parsed set of maintenance windows in a location.
type Schedule struct {
	Windows []Window
	Loc     *time.Location
}

// Window is one maintenance window: on the days set in Days (indexed by
// time.Weekday) from Start to End, in seconds after midnight; End ≤ Start
// crosses midnight.
type Window struct {
	Days       [7]bool
	Start, End int
}

// validate parses the windows and the time zone once.
func (m *MaintenanceConfig) validate() error {
	var specs []string
	if strings.TrimSpace(m.Window) != "" {
		specs = append(specs, m.Window)
	}
	specs = append(specs, m.Windows...)
	if len(specs) == 0 {
		return fmt.Errorf("maintenance needs a window, %s", windowExample)
	}
	if len(specs) > MaxWindows {
		return fmt.Errorf("maintenance has %d windows, at most %d", len(specs), MaxWindows)
	}
	s := &Schedule{}
	for _, spec := range specs {
		w, err := ParseWindow(spec)
		if err != nil {
			return fmt.Errorf("maintenance: %w", err)
		}
		s.Windows = append(s.Windows, w)
	}
	loc, err := LoadZone(m.Timezone)
	if err != nil {
		return fmt.Errorf("maintenance: %w", err)
	}
	s.Loc = loc
	// Validate runs again on a config in use: assign only once.
	if m.sched == nil {
		m.sched = s
	}
	return nil
}

// Schedule returns the parsed windows (nil before Config.Validate).
func (m *MaintenanceConfig) Schedule() *Schedule {
	if m == nil {
		return nil
	}
	return m.sched
}

// LoadZone loads a maintenance time zone: "" or "Local" (the device's
// zone), "UTC", a fixed offset ("+02:00", "-0530"), or an IANA name from
// the device's zoneinfo.
func LoadZone(name string) (*time.Location, error) {
	switch name {
	case "", "Local":
		return time.Local, nil
	case "UTC", "Z":
		return time.UTC, nil
	}
	if off, ok := parseOffset(name); ok {
		return time.FixedZone(name, off), nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("timezone %q is unknown on this device (%v): a named zone needs the time zone database (/usr/share/zoneinfo: install the tzdata package; the agent does not embed it, to stay small), or give a fixed offset like \"+02:00\" or \"UTC\" (a fixed offset does not follow daylight saving time)", name, err)
	}
	return loc, nil
}

// parseOffset reads "+02:00", "-0530", "+2" as seconds east of UTC.
func parseOffset(s string) (int, bool) {
	if len(s) < 2 || (s[0] != '+' && s[0] != '-') {
		return 0, false
	}
	h, m := s[1:], "0"
	if hh, mm, ok := strings.Cut(h, ":"); ok {
		h, m = hh, mm
	} else if len(h) == 4 {
		h, m = h[:2], h[2:]
	}
	hv, err1 := strconv.Atoi(h)
	mv, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || len(h) > 2 || len(m) > 2 || !digits(h) || !digits(m) || hv > 14 || mv > 59 {
		return 0, false
	}
	off := hv*3600 + mv*60
	if s[0] == '-' {
		off = -off
	}
	return off, true
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWindow parses "[DAYS ]HH:MM-HH:MM" (see MaintenanceConfig.Window).
func ParseWindow(s string) (Window, error) {
	var w Window
	bad := func(format string, a ...any) (Window, error) {
		return Window{}, fmt.Errorf("window %q: %s; %s", clip(s, 80), fmt.Sprintf(format, a...), windowExample)
	}
	f := strings.Fields(s)
	var days, times string
	switch len(f) {
	case 1:
		times = f[0]
		if !strings.Contains(times, ":") {
			return bad("%q has no time range HH:MM-HH:MM", clip(times, 20))
		}
		for i := range w.Days {
			w.Days[i] = true
		}
	case 2:
		days, times = f[0], f[1]
	case 0:
		return bad("it is empty")
	default:
		return bad("want days and a time range separated by one space, found %d words", len(f))
	}
	if days != "" {
		for _, part := range strings.Split(days, ",") {
			from, to, isRange := strings.Cut(part, "-")
			a, ok := dayIndex(from)
			if !ok {
				return bad("%q is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", clip(from, 20))
			}
			b := a
			if isRange {
				if b, ok = dayIndex(to); !ok {
					return bad("%q is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", clip(to, 20))
				}
			}
			for d := a; ; d = (d + 1) % 7 {
				w.Days[d] = true
				if d == b {
					break
				}
			}
		}
	}
	from, to, ok := strings.Cut(times, "-")
	if !ok {
		return bad("%q is not a time range HH:MM-HH:MM", clip(times, 20))
	}
	var err error
	if w.Start, err = parseClock(from, false); err != nil {
		return bad("start %v", err)
	}
	if w.End, err = parseClock(to, true); err != nil {
		return bad("end %v", err)
	}
	if w.Start == w.End {
		return bad("it starts and ends at %s, so it is empty (use 00:00-24:00 for a whole day)", clockString(w.Start))
	}
	return w, nil
}

func dayIndex(s string) (int, bool) {
	l := strings.ToLower(s)
	for i, n := range dayNames {
		if l == n {
			return i, true
		}
	}
	return 0, false
}

// parseClock reads HH:MM as seconds after midnight; 24:00 only as an end.
func parseClock(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) == 0 || len(h) > 2 || len(m) != 2 || !digits(h) || !digits(m) {
		return 0, fmt.Errorf("%q is not a time HH:MM", clip(s, 20))
	}
	hv, _ := strconv.Atoi(h)
	mv, _ := strconv.Atoi(m)
	if mv > 59 || hv > 24 || (hv == 24 && (mv != 0 || !end)) {
		return 0, fmt.Errorf("%q is not a time of day (00:00 to 23:59; 24:00 only as an end)", s)
	}
	return hv*3600 + mv*60, nil
}

func clockString(sec int) string { return fmt.Sprintf("%02d:%02d", sec/3600, sec%3600/60) }

// String writes the window back in the syntax ParseWindow reads.
func (w Window) String() string {
	all := true
	var days []string
	for _, i := range []int{1, 2, 3, 4, 5, 6, 0} { // Mon first
		if w.Days[i] {
			days = append(days, strings.ToUpper(dayNames[i][:1])+dayNames[i][1:])
		} else {
			all = false
		}
	}
	t := clockString(w.Start) + "-" + clockString(w.End)
	if all {
		return t
	}
	return strings.Join(days, ",") + " " + t
}

// intervals are the windows' occurrences starting on the calendar days
// from day-1 to day+8 around now, in the schedule's location.
func (s *Schedule) each(now time.Time, fn func(start, end time.Time) bool) {
	n := now.In(s.Loc)
	y, mo, d := n.Date()
	for off := -1; off <= 8; off++ {
		day := time.Date(y, mo, d+off, 12, 0, 0, 0, s.Loc)
		wd := day.Weekday()
		dy, dm, dd := day.Date()
		for _, w := range s.Windows {
			if !w.Days[wd] {
				continue
			}
			// time.Date normalises the wall clock, then applies the zone's
			// offset on that day: daylight saving time is followed.
			start := time.Date(dy, dm, dd, 0, 0, w.Start, 0, s.Loc)
			endDay := dd
			if w.End <= w.Start {
				endDay++
			}
			end := time.Date(dy, dm, endDay, 0, 0, w.End, 0, s.Loc)
			if !fn(start, end) {
				return
			}
		}
	}
}

// Open reports whether now is inside one of the windows.
func (s *Schedule) Open(now time.Time) bool {
	open := false
	s.each(now, func(start, end time.Time) bool {
		if !now.Before(start) && now.Before(end) {
			open = true
			return false
		}
		return true
	})
	return open
}

// NextOpen is now when a window is open, else when the next one opens
// (within a week; every window has a day).
func (s *Schedule) NextOpen(now time.Time) time.Time {
	if s.Open(now) {
		return now
	}
	var next time.Time
	s.each(now, func(start, end time.Time) bool {
		if start.After(now) && end.After(start) && (next.IsZero() || start.Before(next)) {
			next = start
		}
		return true
	})
	return next
}

// String lists the windows and the zone.
func (s *Schedule) String() string {
	ws := make([]string, len(s.Windows))
	for i, w := range s.Windows {
		ws[i] = w.String()
	}
	return strings.Join(ws, "; ") + " (" + s.Loc.String() + ")"
}

// mqttClock is the clock of maintenance-window decisions; tests move it
// to open or close a window without waiting for one.
var mqttClock = time.Now

// windowOpen reports whether ap's complete download may install now: no
// maintenance window is configured, or one is open. Otherwise it notes
// when the next one opens (reported as apps[].window_opens) and logs the
// wait once per release.
func (t *mqttTransport) windowOpen(ap *mqttApp) bool {
	s := t.cfg.Maintenance.Schedule()
	if s == nil {
		ap.waitOpens = time.Time{}
		return true
	}
	if t.nothingRuns(ap) {
		// A device just set up runs nothing yet: its first install
		// disturbs no service, and the field engineer who set it up
		// sees it work before leaving.
		ap.waitOpens = time.Time{}
		return true
	}
	now := mqttClock()
	next := s.NextOpen(now)
	if !next.After(now) {
		if !ap.waitOpens.IsZero() {
			t.logf("mqtt: %s: the maintenance window is open; installing %s", ap.cfg.Name, ap.dl.rel.m.Version)
		}
		ap.waitOpens = time.Time{}
		return true
	}
	ap.waitOpens = next
	if m := ap.dl.rel.m; ap.waitLogged != m.Payload.SHA256 {
		ap.waitLogged = m.Payload.SHA256
		t.logf("mqtt: %s %s is downloaded; it installs when the maintenance window opens, at %s (%s UTC; windows %s)",
			m.App, m.Version, next.In(s.Loc).Format("Mon 2006-01-02 15:04 MST"), next.UTC().Format("2006-01-02 15:04"), s)
	}
	return false
}

// nothingRuns reports whether app has never been installed by edgefleet
// and has no executable at its path (no factory binary either): then
// nothing runs that an install could interrupt.
func (t *mqttTransport) nothingRuns(ap *mqttApp) bool {
	a := t.agent()
	if a == nil {
		return false
	}
	r, err := a.load(ap.cfg.Name)
	if err != nil || r.State != StateNone {
		return false
	}
	_, err = os.Lstat(ap.cfg.Path)
	return errors.Is(err, fs.ErrNotExist)
}
