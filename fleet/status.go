package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// FleetView aggregates device status and presence messages (subscribe to
// protocol.DeviceFilters), and the devices' assignments when it is also
// subscribed to protocol.AllDesiredFilter. It is safe for concurrent use: Update runs on
// the MQTT delivery goroutine, the table on another.
//
// A device's state comes from its status, its liveness from its presence
// message when it has one (agents before presence existed said offline
// in the status itself); its last contact is the later of the two
// messages' times. A device whose last contact is older than
// DefaultStaleAfter (three status heartbeats) is offline whatever its
// presence says: its last will may have died with a broker node.
type FleetView struct {
	mu       sync.Mutex
	devices  map[string]*protocol.DeviceStatus
	presence map[string]*protocol.Presence
	// malformed holds the status topics whose latest message was
	// malformed (a set, so a redelivered retained message counts once).
	malformed map[string]bool
	// assigned maps device → app → version of its desired release.
	assigned map[string]map[string]string
	// sel, when set, limits Devices (and all that follows) to the devices
	// whose labels match it.
	sel protocol.Selector
	gen int
	// staleAfter: a last contact older than this shows the device offline
	// (0: DefaultStaleAfter, negative: off); now replaces time.Now for
	// tests (liveness.go).
	staleAfter time.Duration
	now        func() time.Time
}

// NewFleetView returns an empty view.
func NewFleetView() *FleetView {
	return &FleetView{devices: map[string]*protocol.DeviceStatus{}, presence: map[string]*protocol.Presence{},
		malformed: map[string]bool{}, assigned: map[string]map[string]string{}}
}

// Select limits the view to devices whose reported labels match sel (the
// empty selector: every device).
func (v *FleetView) Select(sel protocol.Selector) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.sel = sel
	v.gen++
}

// Assigned returns the selected devices' assignments: device → app →
// version.
func (v *FleetView) Assigned() map[string]map[string]string {
	devs := v.Devices()
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string]map[string]string{}
	for _, d := range devs {
		if a := v.assigned[d.Device]; len(a) > 0 {
			out[d.Device] = map[string]string{}
			for app, ver := range a {
				out[d.Device][app] = ver
			}
		}
	}
	return out
}

// updateDesired applies a desired-topic message: the envelope's manifest,
// parsed strictly, must be for the topic's app.
func (v *FleetView) updateDesired(t protocol.Topic, topic string, payload []byte) error {
	var version string
	var err error
	if len(payload) > 0 {
		var env *protocol.Envelope
		var m *protocol.Manifest
		if env, err = protocol.ParseEnvelope(payload); err == nil {
			if m, err = protocol.ParseManifest(env.Manifest); err == nil && m.App != t.App {
				err = fmt.Errorf("assignment on %s is for app %q", topic, m.App)
			}
		}
		if err == nil {
			version = m.Version
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		v.malformed[topic] = true
		return fmt.Errorf("dropped assignment: %w", err)
	}
	delete(v.malformed, topic)
	if version == "" {
		delete(v.assigned[t.Device], t.App)
	} else {
		if v.assigned[t.Device] == nil {
			v.assigned[t.Device] = map[string]string{}
		}
		v.assigned[t.Device][t.App] = version
	}
	v.gen++
	return nil
}

// Update applies one message from a status or presence topic. An empty
// status removes the device, an empty presence its liveness. A malformed
// message is dropped and returned as an error for the caller to log; the
// view is unchanged.
func (v *FleetView) Update(topic string, payload []byte) error {
	t, err := protocol.ParseTopic(topic)
	if err == nil && t.Kind == protocol.KindDesired {
		return v.updateDesired(t, topic, payload)
	}
	if err == nil && t.Kind != protocol.KindStatus && t.Kind != protocol.KindPresence {
		err = fmt.Errorf("topic %s is not a status, presence or desired topic", topic)
	}
	var s *protocol.DeviceStatus
	var p *protocol.Presence
	if err == nil && len(payload) > 0 {
		if t.Kind == protocol.KindStatus {
			s, err = protocol.ParseStatus(payload)
			if err == nil && s.Device != t.Device {
				err = fmt.Errorf("status on %s claims to be device %q", topic, s.Device)
			}
		} else {
			p, err = protocol.ParsePresence(payload)
			if err == nil && p.Device != t.Device {
				err = fmt.Errorf("presence on %s claims to be device %q", topic, p.Device)
			}
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		v.malformed[topic] = true
		return fmt.Errorf("dropped %s message: %w", t.Kind, err)
	}
	delete(v.malformed, topic)
	switch {
	case t.Kind == protocol.KindPresence && p == nil:
		delete(v.presence, t.Device)
	case t.Kind == protocol.KindPresence:
		v.presence[t.Device] = p
	case s == nil:
		delete(v.devices, t.Device)
	default:
		v.devices[t.Device] = s
	}
	v.gen++
	return nil
}

// Generation changes whenever the view changes.
func (v *FleetView) Generation() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.gen
}

// Devices returns a copy of the statuses, sorted by device id, with
// Online from the device's presence message when it has one (false when
// the last contact is older than the stale limit, see SetStaleAfter) and
// Time its last contact (the later of its status and presence times).
func (v *FleetView) Devices() []protocol.DeviceStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]protocol.DeviceStatus, 0, len(v.devices))
	for id, s := range v.devices {
		if !v.sel.Matches(s.Labels) {
			continue
		}
		d := *s
		d.Online, d.Time = v.liveness(id, d.Online, d.Time)
		if _, silent := v.stale(d.Time); silent {
			d.Online = false
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// Summary counts devices per app version and in trouble.
type Summary struct {
	Devices int `json:"devices"`
	Offline int `json:"offline"`
	// Failed counts app instances that are failed or carry a last error
	// without having been rolled back.
	Failed int `json:"failed"`
	// RolledBack counts app instances that refused a release on trial and
	// run their previous version again: they work, the release did not.
	RolledBack int `json:"rolled_back"`
	// Versions maps app → version → devices running it.
	Versions map[string]map[string]int `json:"versions"`
	// Dropped counts status topics whose latest message was malformed.
	Dropped int `json:"dropped"`
	// DeltaUsed counts app instances whose last release came as a delta
	// (apps[].delta "used"); DeltaFallback those that fell back to the
	// full release (SPEC.md §8.10).
	DeltaUsed     int `json:"delta_used"`
	DeltaFallback int `json:"delta_fallback"`
}

// Summary computes the summary line's numbers.
func (v *FleetView) Summary() Summary {
	devs := v.Devices()
	v.mu.Lock()
	s := Summary{Devices: len(devs), Versions: map[string]map[string]int{}, Dropped: len(v.malformed)}
	v.mu.Unlock()
	for _, d := range devs {
		if !d.Online {
			s.Offline++
		}
		for _, a := range d.Apps {
			if s.Versions[a.App] == nil {
				s.Versions[a.App] = map[string]int{}
			}
			ver := a.Version
			if ver == "" {
				ver = "none"
			}
			s.Versions[a.App][ver]++
			switch {
			case a.Delta == protocol.DeltaUsed:
				s.DeltaUsed++
			case strings.HasPrefix(a.Delta, "fallback"):
				s.DeltaFallback++
			}
			switch {
			case a.State == "rolled-back":
				s.RolledBack++
			case Failed(a):
				s.Failed++
			}
		}
	}
	return s
}

// Failed reports whether an app report shows trouble. A note (why the
// device stays behind the channel) is not trouble.
func Failed(a protocol.AppReport) bool {
	return a.State == "failed" || a.State == "rolled-back" || a.LastError != ""
}

// Converged reports whether every device in the view runs version of app in
// a settled state (committed, or on trial when trialOK). Used by tests and
// the demo.
func (v *FleetView) Converged(app, version string, devices int, states ...string) bool {
	devs := v.Devices()
	if len(devs) < devices {
		return false
	}
	n := 0
	for _, d := range devs {
		for _, a := range d.Apps {
			if a.App != app || a.Version != version {
				continue
			}
			if len(states) == 0 || contains(states, a.State) {
				n++
			}
		}
	}
	return n >= devices
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// percent is done/total as a whole percentage in 0..100, never more or
// less whatever a device reported, and without the overflow of done*100;
// 100 only when done == total.
func percent(done, total int64) int64 {
	if total <= 0 {
		return 0
	}
	done = min(max(done, 0), total)
	p := min(int64(float64(done)/float64(total)*100), 100)
	if p == 100 && done < total {
		p = 99
	}
	return p
}

// WriteTable prints the fleet table and the summary line.
func (v *FleetView) WriteTable(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	// LABELS only when a device has labels: a fleet without them keeps
	// the narrower table.
	devs := v.Devices()
	withLabels := slices.ContainsFunc(devs, func(d protocol.DeviceStatus) bool { return len(d.Labels) > 0 })
	labels := func(d protocol.DeviceStatus) string {
		if !withLabels {
			return ""
		}
		return oneLine(d.Labels.String(), 24) + "\t"
	}
	if withLabels {
		fmt.Fprintln(tw, "DEVICE\tPROFILE\tLABELS\tAPP\tVERSION\tSTATE\tPROGRESS\tLAST SEEN\tERROR")
	} else {
		fmt.Fprintln(tw, "DEVICE\tPROFILE\tAPP\tVERSION\tSTATE\tPROGRESS\tLAST SEEN\tERROR")
	}
	assigned := v.Assigned()
	silent := v.Silent()
	for _, d := range devs {
		seen := "offline " + ago(now, d.Time)
		if d.Online {
			seen = ago(now, d.Time)
		} else if _, ok := silent[d.Device]; ok {
			seen = noContact(now.Sub(d.Time))
		}
		apps := d.Apps
		// An app assigned to the device that it does not report yet.
		for _, app := range sortedKeys(assigned[d.Device]) {
			if !slices.ContainsFunc(apps, func(a protocol.AppReport) bool { return a.App == app }) {
				apps = append(apps, protocol.AppReport{App: app})
			}
		}
		if len(apps) == 0 {
			apps = []protocol.AppReport{{App: "-"}}
		}
		for _, a := range apps {
			prog := "-"
			if p := a.Progress; p != nil && p.Total > 0 {
				prog = fmt.Sprintf("%s %d%%", p.Step, percent(p.Done, p.Total))
			}
			msg := a.LastError
			if msg == "" && a.WindowOpens != nil {
				msg = fmt.Sprintf("installs when its window opens %s (%s)", in(now, *a.WindowOpens), a.WindowOpens.UTC().Format("Mon 15:04 UTC"))
			}
			if msg == "" && a.Note != "" {
				msg = "note: " + a.Note
			}
			ver := dash(a.Version)
			if a.Target != "" && a.Target != a.Version {
				ver += " → " + a.Target
			}
			if as, ok := assigned[d.Device][a.App]; ok {
				if as == a.Version {
					ver += " (assigned)"
				} else {
					ver += " (assigned " + as + ")"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s%s\t%s\t%s\t%s\t%s\t%s\n", d.Device, dash(d.Profile), labels(d), a.App, ver, dash(a.State), prog, seen, oneLine(msg, 60))
		}
	}
	tw.Flush()
	fmt.Fprintln(w, v.Summary().String())
}

// String is the summary line: "5 devices, 1 offline, 0 failed; hello 1.0.0: 2, 1.1.0: 3".
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d devices, %d offline, %d failed", s.Devices, s.Offline, s.Failed)
	if s.RolledBack > 0 {
		fmt.Fprintf(&b, ", %d rolled back", s.RolledBack)
	}
	if s.DeltaUsed+s.DeltaFallback > 0 {
		fmt.Fprintf(&b, ", %d took a delta", s.DeltaUsed)
		if s.DeltaFallback > 0 {
			fmt.Fprintf(&b, " (%d fell back to the full release)", s.DeltaFallback)
		}
	}
	apps := make([]string, 0, len(s.Versions))
	for a := range s.Versions {
		apps = append(apps, a)
	}
	sort.Strings(apps)
	for i, a := range apps {
		if i == 0 {
			b.WriteString("; ")
		} else {
			b.WriteString("; ")
		}
		vers := make([]string, 0, len(s.Versions[a]))
		for ver := range s.Versions[a] {
			vers = append(vers, ver)
		}
		sort.Strings(vers)
		b.WriteString(a)
		for j, ver := range vers {
			if j == 0 {
				b.WriteString(" ")
			} else {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s: %d", ver, s.Versions[a][ver])
		}
	}
	if s.Dropped > 0 {
		fmt.Fprintf(&b, " (%d malformed status messages ignored)", s.Dropped)
	}
	return b.String()
}

// WriteJSON prints {"devices":[...],"summary":{...}}.
func (v *FleetView) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Devices []protocol.DeviceStatus `json:"devices"`
		// Assigned is device → app → version of its assignment.
		Assigned map[string]map[string]string `json:"assigned"`
		Summary  Summary                      `json:"summary"`
	}{v.Devices(), v.Assigned(), v.Summary()})
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return dash(s)
}

// in says how far in the future t is: "in 3h", "in 12m", "now".
func in(now, t time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d <= 0:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("in %ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("in %dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("in %dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return "on " + t.UTC().Format("2006-01-02")
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02")
}
