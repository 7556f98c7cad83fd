package fleet

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// TableOptions shape WriteTableWith: the default table, or the wide one.
type TableOptions struct {
	// Wide adds CPU, agent version, channel and sequence, and prints the
	// whole error instead of its first 60 characters.
	Wide bool
	// Color marks states on a terminal: failed and rolled back red, on
	// trial or installing yellow, committed green. The caller decides
	// (a terminal, NO_COLOR unset).
	Color bool
}

// stateColor wraps a state in an ANSI colour. Every state gets escape
// sequences of the same length (default colour for the others), so the
// table's columns stay aligned.
func stateColor(state string, on bool) string {
	if !on {
		return state
	}
	code := "39" // default
	switch state {
	case "failed", "rolled-back", "refused":
		code = "31"
	case "trial", "staging", "staged", "swapping", "rolling-back":
		code = "33"
	case "committed":
		code = "32"
	}
	return "\x1b[" + code + "m" + state + "\x1b[0m"
}

// WriteTableWith prints the fleet table as the options say, then the
// summary line. WriteTable is WriteTableWith with the zero options.
func (v *FleetView) WriteTableWith(w io.Writer, now time.Time, o TableOptions) {
	if !o.Wide && !o.Color {
		v.WriteTable(w, now)
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	devs := v.Devices()
	header := "DEVICE\tPROFILE\tAPP\tVERSION\t" + stateColor("STATE", o.Color) + "\tPROGRESS\tLAST SEEN\tERROR"
	if o.Wide {
		header = "DEVICE\tPROFILE\tCPU\tAGENT\tCHANNEL\tLABELS\tAPP\tVERSION\tSEQ\t" + stateColor("STATE", o.Color) + "\tPROGRESS\tLAST SEEN\tERROR"
	}
	fmt.Fprintln(tw, header)
	assigned := v.Assigned()
	silent := v.Silent()
	for _, d := range devs {
		seen := v.seen(now, d, silent)
		for _, a := range appsOf(d, assigned) {
			prog := "-"
			if p := a.Progress; p != nil && p.Total > 0 {
				prog = fmt.Sprintf("%s %d%%", p.Step, percent(p.Done, p.Total))
			}
			msg := appMessage(now, a)
			if !o.Wide {
				msg = oneLine(msg, 60)
			}
			ver := versionCell(a, assigned[d.Device])
			if o.Wide {
				seq := "-"
				if a.Sequence > 0 {
					seq = fmt.Sprint(a.Sequence)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Device, dash(d.Profile), dash(d.CPU), dash(d.AgentVersion), dash(d.Channel),
					dash(d.Labels.String()), a.App, ver, seq, stateColor(dash(a.State), o.Color), prog, seen, msg)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Device, dash(d.Profile), a.App, ver, stateColor(dash(a.State), o.Color), prog, seen, msg)
		}
	}
	tw.Flush()
	fmt.Fprintln(w, v.Summary().String())
}

// seen is the LAST SEEN cell.
func (v *FleetView) seen(now time.Time, d protocol.DeviceStatus, silent map[string]time.Duration) string {
	if d.Online {
		return ago(now, d.Time)
	}
	if _, ok := silent[d.Device]; ok {
		return noContact(now.Sub(d.Time))
	}
	return "offline " + ago(now, d.Time)
}

// appsOf is the device's apps, plus those assigned to it that it does not
// report yet ("-" when none).
func appsOf(d protocol.DeviceStatus, assigned map[string]map[string]string) []protocol.AppReport {
	apps := d.Apps
	for _, app := range sortedKeys(assigned[d.Device]) {
		if !slices.ContainsFunc(apps, func(a protocol.AppReport) bool { return a.App == app }) {
			apps = append(apps, protocol.AppReport{App: app})
		}
	}
	if len(apps) == 0 {
		apps = []protocol.AppReport{{App: "-"}}
	}
	return apps
}

// appMessage is the ERROR cell before clipping: the error, else when the
// maintenance window opens, else the note.
func appMessage(now time.Time, a protocol.AppReport) string {
	msg := a.LastError
	if msg == "" && a.WindowOpens != nil {
		msg = fmt.Sprintf("installs when its window opens %s (%s)", in(now, *a.WindowOpens), a.WindowOpens.UTC().Format("Mon 15:04 UTC"))
	}
	if msg == "" && a.Note != "" {
		msg = "note: " + a.Note
	}
	return msg
}

// versionCell is "0.2.0 → 0.3.0 (assigned 0.3.0)".
func versionCell(a protocol.AppReport, assigned map[string]string) string {
	ver := dash(a.Version)
	if a.Target != "" && a.Target != a.Version {
		ver += " → " + a.Target
	}
	if as, ok := assigned[a.App]; ok {
		if as == a.Version {
			ver += " (assigned)"
		} else {
			ver += " (assigned " + as + ")"
		}
	}
	return ver
}

// WriteDevice prints one device the way `kubectl describe` does: every
// field, whole errors and notes, and each app's rollout phase. It returns
// false when the view has no status from the device.
func (v *FleetView) WriteDevice(w io.Writer, now time.Time, device string, color bool) bool {
	var d *protocol.DeviceStatus
	for _, s := range v.Devices() {
		if s.Device == device {
			d = &s
			break
		}
	}
	if d == nil {
		return false
	}
	assigned := v.Assigned()[d.Device]
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	row("Device:", "%s", d.Device)
	row("Profile:", "%s", dash(d.Profile))
	row("CPU:", "%s", dash(d.CPU))
	row("Agent:", "%s", dash(d.AgentVersion))
	row("Channel:", "%s", dash(d.Channel))
	row("Labels:", "%s", dash(d.Labels.String()))
	if d.Broker != "" {
		row("Broker:", "%s", d.Broker)
	}
	state := "online"
	if !d.Online {
		state = "offline"
	}
	if _, ok := v.Silent()[d.Device]; ok {
		state = "no contact"
	}
	row("Last seen:", "%s (%s, %s)", ago(now, d.Time), state, d.Time.UTC().Format(time.RFC3339))
	tw.Flush()
	for _, a := range appsOf(*d, map[string]map[string]string{d.Device: assigned}) {
		fmt.Fprintf(w, "\nApp %s:\n", a.App)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row := func(k, format string, x ...any) { fmt.Fprintf(tw, "  %s\t"+format+"\n", append([]any{k}, x...)...) }
		ver := dash(a.Version)
		if a.Sequence > 0 {
			ver += fmt.Sprintf(" (sequence %d)", a.Sequence)
		}
		row("Version:", "%s", ver)
		row("State:", "%s", stateColor(dash(a.State), color))
		if a.Target != "" && a.Target != a.Version {
			t := a.Target
			if p := a.Progress; p != nil && p.Total > 0 {
				t += fmt.Sprintf(" (%s %d%%)", p.Step, percent(p.Done, p.Total))
			}
			row("Working on:", "%s", t)
		}
		if as, ok := assigned[a.App]; ok {
			row("Assigned:", "%s (wins over the channel)", as)
		}
		if a.LastError != "" {
			row("Error:", "%s", a.LastError)
		}
		if a.WindowOpens != nil {
			row("Installs:", "when its window opens %s (%s)", in(now, *a.WindowOpens), a.WindowOpens.UTC().Format(time.RFC3339))
		}
		if a.Note != "" {
			row("Note:", "%s", a.Note)
		}
		if r := a.Rollout; r != nil {
			s := r.ID + ": " + r.Phase
			if r.Error != "" {
				s += ": " + r.Error
			}
			row("Rollout:", "%s", s)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nThe history and the apps' last output lines stay on the device: `edgefleet-agent status` there shows them.\n")
	return true
}

// DeviceIDs lists the devices the view holds a status from.
func (v *FleetView) DeviceIDs() []string {
	var out []string
	for _, d := range v.Devices() {
		out = append(out, d.Device)
	}
	return out
}
