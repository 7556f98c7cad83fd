package fleet

import (
	"fmt"
	"time"
)

// StatusHeartbeat is how often a connected agent republishes its retained
// status even when nothing changed (the agent's mqttHeartbeat).
const StatusHeartbeat = 5 * time.Minute

// DefaultStaleAfter is how old a device's last contact (the later of its
// status and presence times) may be before FleetView shows it offline
// whatever its presence says: three status heartbeats. A last will does
// not always arrive (it dies with a broker node that fails, or a cluster
// loses it), so an "online" presence alone does not keep a silent device
// online. A device whose clock is behind by more than this also shows
// offline: keep device clocks in sync (NTP).
const DefaultStaleAfter = 3 * StatusHeartbeat

// SetStaleAfter changes how old a last contact may be before the device
// shows as offline: 0 is DefaultStaleAfter, a negative d turns the check
// off, so only presence messages decide. now, when not nil, replaces
// time.Now (tests).
func (v *FleetView) SetStaleAfter(d time.Duration, now func() time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.staleAfter, v.now = d, now
	v.gen++
}

// stale reports whether a device whose last contact is last counts as
// offline because nothing was heard from it for too long, and for how long.
// Called with v.mu held.
func (v *FleetView) stale(last time.Time) (time.Duration, bool) {
	after := v.staleAfter
	if after == 0 {
		after = DefaultStaleAfter
	}
	if after < 0 || last.IsZero() {
		return 0, false
	}
	now := time.Now()
	if v.now != nil {
		now = v.now()
	}
	silent := now.Sub(last)
	return silent, silent > after
}

// Silent returns the devices that FleetView shows offline only because
// nothing was heard from them for longer than the stale limit (their
// presence still says online), with how long: device id → duration.
func (v *FleetView) Silent() map[string]time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string]time.Duration{}
	for id, s := range v.devices {
		if !v.sel.Matches(s.Labels) {
			continue
		}
		online, last := v.liveness(id, s.Online, s.Time)
		if !online {
			continue
		}
		if d, ok := v.stale(last); ok {
			out[id] = d
		}
	}
	return out
}

// liveness is a device's presence-or-status liveness and last contact,
// before the stale check. Called with v.mu held.
func (v *FleetView) liveness(id string, online bool, last time.Time) (bool, time.Time) {
	if p := v.presence[id]; p != nil {
		online = p.Online
		if p.Time.After(last) {
			last = p.Time
		}
	}
	return online, last
}

// noContact is how the table says a silent device is offline:
// "offline (no contact for 20m)".
func noContact(d time.Duration) string {
	d = d.Round(time.Minute)
	switch {
	case d < time.Hour:
		return fmt.Sprintf("offline (no contact for %dm)", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("offline (no contact for %dh%02dm)", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("offline (no contact for %dd)", int(d.Hours())/24)
}
