package dashboard

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// Filters are what the dashboard subscribes to, on one connection:
// device statuses and presence, assignments, channel releases, rollouts
// (control messages and candidates) and the rollout driver's presence.
var Filters = append(append([]string{}, protocol.DeviceFilters...),
	protocol.AllDesiredFilter, protocol.AllReleasesFilter, protocol.AllRolloutsFilter, protocol.DriverTopic)

// maxMalformedShown bounds the malformed messages listed (the count stays
// exact); maxMalformedKept bounds the topics remembered as malformed (more
// are only counted, so a flood of garbage topics cannot grow memory).
const (
	maxMalformedShown = 50
	maxMalformedKept  = 10_000
)

// device is what the dashboard knows of one device. Only devices with a
// status are shown; presence and assignments may arrive first.
type device struct {
	status   *protocol.DeviceStatus
	presence *protocol.Presence
	assigned map[string]string // app → version
	history  []HistoryEntry    // oldest first, at most Options.HistoryPerDevice
	row      []byte            // cached JSON row; nil when stale
	// epoch of the last status, presence (Resync).
	statusEpoch, presenceEpoch int
}

// HistoryEntry is one change of a device's reported state, as the
// dashboard saw it.
type HistoryEntry struct {
	Time   time.Time    `json:"time"`
	Online bool         `json:"online"`
	Apps   []HistoryApp `json:"apps"`
	Event  string       `json:"event,omitempty"` // "first seen by the dashboard", "went offline", ...
	sig    string       // the entry's content, compared to drop repeats
}

// HistoryApp is one app in a history entry.
type HistoryApp struct {
	App       string `json:"app"`
	Version   string `json:"version,omitempty"`
	State     string `json:"state,omitempty"`
	Target    string `json:"target,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// Row is one device as pages receive it.
type Row struct {
	ID     string                 `json:"id"`
	Status *protocol.DeviceStatus `json:"status"`
	// Online is the device's liveness from its presence (or status);
	// Seen its last contact. Pages show it offline also when Seen is older
	// than the snapshot's stale_after_ms.
	Online   bool              `json:"online"`
	Seen     time.Time         `json:"seen"`
	Assigned map[string]string `json:"assigned,omitempty"`
}

// Point is one sample of the fleet's versions over time.
type Point struct {
	Time time.Time `json:"t"`
	// Versions maps "app version" → app instances running it.
	Versions map[string]int `json:"v"`
	Failed   int            `json:"failed"`
	Offline  int            `json:"offline"`
	Devices  int            `json:"devices"`
}

// RolloutView is one rollout as pages receive it.
type RolloutView struct {
	Topic                string                    `json:"topic"`
	ID                   string                    `json:"id"`
	Channel              string                    `json:"channel"`
	App                  string                    `json:"app"`
	Version              string                    `json:"version"`
	Sequence             uint64                    `json:"sequence"`
	Profiles             []string                  `json:"profiles"`
	Select               string                    `json:"select"`
	State                string                    `json:"state"`
	Reason               string                    `json:"reason,omitempty"`
	Counts               protocol.RolloutCounts    `json:"counts"`
	Failures             []protocol.RolloutFailure `json:"failures,omitempty"`
	MaxFailures          float64                   `json:"max_failures"`
	MinExecuted          int                       `json:"min_executed"`
	BakeSeconds          int64                     `json:"bake_seconds"`
	DeviceTimeoutSeconds int64                     `json:"device_timeout_seconds"`
	Wave                 int                       `json:"wave"`
	Waves                []WaveView                `json:"waves"`
	Created              time.Time                 `json:"created"`
	Updated              time.Time                 `json:"updated"`
	Driver               string                    `json:"driver,omitempty"`
}

// WaveView is one wave of a rollout.
type WaveView struct {
	Spec    string     `json:"spec"` // "1" or "25%"
	Size    int        `json:"size"` // devices it covers (cumulative)
	Started *time.Time `json:"started,omitempty"`
	// Status is done, current or later.
	Status string `json:"status"`
}

// CatalogView is what the broker holds, as pages receive it.
type CatalogView struct {
	Releases    []fleet.CatalogRelease   `json:"releases"`
	Candidates  []fleet.CatalogRelease   `json:"candidates"`
	Assignments []fleet.CatalogRelease   `json:"assignments"`
	Rollouts    []RolloutView            `json:"rollouts"`
	Malformed   []fleet.CatalogMalformed `json:"malformed"`
	Driver      *protocol.DriverPresence `json:"driver"`
}

// Malformed is a device message the dashboard dropped.
type Malformed struct {
	Topic string `json:"topic"`
	Error string `json:"error"`
}

// state is the fleet model. Callers hold Server.mu.
type state struct {
	opts     *Options
	devices  map[string]*device
	retained map[string][]byte // release, desired, rollout and driver topics
	retEpoch map[string]int
	// malformed maps a device topic whose latest message was malformed to
	// why (a set: a redelivered message counts once).
	malformed map[string]string
	// malformedMore counts malformed messages on topics beyond
	// maxMalformedKept.
	malformedMore int
	epoch         int

	dirty        map[string]bool // devices changed since the last push
	catalogDirty bool
	catalogJSON  []byte
	timeline     []Point
	timelineGen  int
}

func newState(o *Options) *state {
	return &state{opts: o, devices: map[string]*device{}, retained: map[string][]byte{}, retEpoch: map[string]int{},
		malformed: map[string]string{}, dirty: map[string]bool{}, catalogDirty: true}
}

func (s *state) dev(id string) *device {
	d := s.devices[id]
	if d == nil {
		d = &device{}
		s.devices[id] = d
	}
	return d
}

// update applies one MQTT message. A malformed message is dropped and
// returned as an error; the view is unchanged.
func (s *state) update(topic string, payload []byte, now time.Time) error {
	if topic == protocol.DriverTopic {
		if len(payload) > 0 {
			if _, err := protocol.ParseDriverPresence(payload); err != nil {
				return fmt.Errorf("dropped driver presence: %w", err)
			}
		}
		s.setRetained(topic, payload)
		return nil
	}
	t, err := protocol.ParseTopic(topic)
	if err != nil {
		s.drop(topic, err)
		return fmt.Errorf("dropped message: %w", err)
	}
	switch t.Kind {
	case protocol.KindRelease, protocol.KindCandidate, protocol.KindRollout:
		// Parsed (strictly) when the catalog is built; a malformed one is
		// listed there.
		s.setRetained(topic, payload)
		return nil
	case protocol.KindDesired:
		return s.updateDesired(t, topic, payload)
	case protocol.KindStatus:
		var st *protocol.DeviceStatus
		if len(payload) > 0 {
			if st, err = protocol.ParseStatus(payload); err == nil && st.Device != t.Device {
				err = fmt.Errorf("status on %s claims to be device %q", topic, protocol.CleanText(st.Device))
			}
		}
		if err != nil {
			s.drop(topic, err)
			return fmt.Errorf("dropped status: %w", err)
		}
		delete(s.malformed, topic)
		if st == nil {
			if d := s.devices[t.Device]; d != nil && d.status != nil {
				d.status = nil
				s.touch(t.Device)
			}
			return nil
		}
		d := s.dev(t.Device)
		d.status, d.statusEpoch = st, s.epoch
		s.record(t.Device, d, now)
		s.touch(t.Device)
		return nil
	case protocol.KindPresence:
		var p *protocol.Presence
		if len(payload) > 0 {
			if p, err = protocol.ParsePresence(payload); err == nil && p.Device != t.Device {
				err = fmt.Errorf("presence on %s claims to be device %q", topic, protocol.CleanText(p.Device))
			}
		}
		if err != nil {
			s.drop(topic, err)
			return fmt.Errorf("dropped presence: %w", err)
		}
		delete(s.malformed, topic)
		d := s.dev(t.Device)
		d.presence, d.presenceEpoch = p, s.epoch
		if d.status != nil {
			s.record(t.Device, d, now)
		}
		s.touch(t.Device)
		return nil
	}
	return fmt.Errorf("dropped message on %s: not a topic the dashboard reads", topic)
}

func (s *state) updateDesired(t protocol.Topic, topic string, payload []byte) error {
	s.setRetained(topic, payload)
	version := ""
	if len(payload) > 0 {
		env, err := protocol.ParseEnvelope(payload)
		var m *protocol.Manifest
		if err == nil {
			if m, err = protocol.ParseManifest(env.Manifest); err == nil && m.App != t.App {
				err = fmt.Errorf("assignment on %s is for app %q", topic, protocol.CleanText(m.App))
			}
		}
		if err != nil {
			// Listed by the catalog as malformed; the device keeps its
			// previous assignment in the view.
			return fmt.Errorf("dropped assignment: %w", err)
		}
		version = m.Version
	}
	d := s.dev(t.Device)
	if version == "" {
		delete(d.assigned, t.App)
	} else {
		if d.assigned == nil {
			d.assigned = map[string]string{}
		}
		d.assigned[t.App] = version
	}
	s.touch(t.Device)
	return nil
}

// drop records a malformed message on topic.
func (s *state) drop(topic string, err error) {
	if _, known := s.malformed[topic]; !known && len(s.malformed) >= maxMalformedKept {
		s.malformedMore++
		return
	}
	msg := err.Error()
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	s.malformed[topic] = msg
}

// dropped counts the malformed messages the view ignores.
func (s *state) dropped() int { return len(s.malformed) + s.malformedMore }

func (s *state) setRetained(topic string, payload []byte) {
	if len(payload) == 0 {
		delete(s.retained, topic)
		delete(s.retEpoch, topic)
	} else {
		s.retained[topic] = payload
		s.retEpoch[topic] = s.epoch
	}
	s.catalogDirty = true
}

func (s *state) touch(id string) {
	if d := s.devices[id]; d != nil {
		d.row = nil
		if d.status == nil && d.presence == nil && len(d.assigned) == 0 {
			delete(s.devices, id)
		}
	}
	s.dirty[id] = true
}

// liveness is the device's presence-or-status liveness and last contact.
func (d *device) liveness() (bool, time.Time) {
	online, last := d.status.Online, d.status.Time
	if p := d.presence; p != nil {
		online = p.Online
		if p.Time.After(last) {
			last = p.Time
		}
	}
	return online, last
}

// record appends a history entry when what the device reports changed.
func (s *state) record(id string, d *device, now time.Time) {
	online, _ := d.liveness()
	e := HistoryEntry{Time: now, Online: online}
	var sig strings.Builder
	fmt.Fprintf(&sig, "%v|", online)
	for _, a := range d.status.Apps {
		h := HistoryApp{App: a.App, Version: a.Version, State: a.State, Target: a.Target, LastError: a.LastError}
		e.Apps = append(e.Apps, h)
		fmt.Fprintf(&sig, "%q %q %q %q %q|", h.App, h.Version, h.State, h.Target, h.LastError)
	}
	e.sig = sig.String()
	if n := len(d.history); n > 0 && d.history[n-1].sig == e.sig {
		return
	}
	if len(d.history) == 0 {
		e.Event = "first seen by the dashboard"
	} else if prev := d.history[len(d.history)-1]; prev.Online != online {
		e.Event = map[bool]string{true: "came online", false: "went offline"}[online]
	}
	if len(d.history) >= s.opts.HistoryPerDevice {
		d.history = slices.Delete(d.history, 0, len(d.history)-s.opts.HistoryPerDevice+1)
	}
	d.history = append(d.history, e)
}

// rowJSON is the device's row, cached until it changes; nil when the
// device has no status.
func (s *state) rowJSON(id string) []byte {
	d := s.devices[id]
	if d == nil || d.status == nil {
		return nil
	}
	if d.row == nil {
		online, seen := d.liveness()
		b, err := json.Marshal(Row{ID: id, Status: d.status, Online: online, Seen: seen, Assigned: d.assigned})
		if err != nil {
			return nil
		}
		d.row = b
	}
	return d.row
}

// sortedIDs are the devices with a status, sorted.
func (s *state) sortedIDs() []string {
	ids := make([]string, 0, len(s.devices))
	for id, d := range s.devices {
		if d.status != nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// catalog is the catalog's JSON, rebuilt when a retained message changed.
func (s *state) catalog() []byte {
	if !s.catalogDirty && s.catalogJSON != nil {
		return s.catalogJSON
	}
	held := map[string][]byte{}
	var driver *protocol.DriverPresence
	for t, b := range s.retained {
		if t == protocol.DriverTopic {
			driver, _ = protocol.ParseDriverPresence(b)
			continue
		}
		held[t] = b
	}
	cat := fleet.NewCatalog(held, s.opts.Keyring)
	rep := cat.Report()
	v := CatalogView{Releases: rep.Releases, Candidates: rep.Candidates, Assignments: rep.Assignments,
		Rollouts: []RolloutView{}, Malformed: rep.Malformed, Driver: driver}
	for _, h := range cat.Rollouts {
		if h.Rollout != nil {
			v.Rollouts = append(v.Rollouts, rolloutView(h.Topic, h.Rollout))
		}
	}
	sort.SliceStable(v.Rollouts, func(i, j int) bool { return v.Rollouts[i].Created.After(v.Rollouts[j].Created) })
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(`{"releases":[],"candidates":[],"assignments":[],"rollouts":[],"malformed":[]}`)
	}
	s.catalogJSON, s.catalogDirty = b, false
	return b
}

func rolloutView(topic string, r *protocol.Rollout) RolloutView {
	v := RolloutView{Topic: topic, ID: r.ID, Channel: r.Channel, App: r.App, Version: r.Version, Sequence: r.Sequence,
		Profiles: r.Profiles, Select: "every device", State: r.State, Reason: r.Reason, Counts: r.Counts, Failures: r.Failures,
		MaxFailures: r.MaxFailures, MinExecuted: r.MinExecuted, BakeSeconds: r.BakeSeconds, DeviceTimeoutSeconds: r.DeviceTimeoutSeconds,
		Wave: r.Wave, Created: r.Created, Updated: r.Updated, Driver: r.Driver}
	if len(r.Select) > 0 {
		v.Select = r.Select.String()
	}
	sizes := protocol.WaveSizes(r.Waves, r.Counts.Selected)
	for i, w := range r.Waves {
		wv := WaveView{Spec: w.String(), Size: sizes[i], Status: "later"}
		if i < len(r.WaveStarted) {
			t := r.WaveStarted[i]
			wv.Started = &t
		}
		switch {
		case i < r.Wave || i == r.Wave && r.State == protocol.RolloutDone:
			wv.Status = "done"
		case i == r.Wave:
			wv.Status = "current"
		}
		v.Waves = append(v.Waves, wv)
	}
	return v
}

// sample computes the fleet's versions now.
func (s *state) sample(now time.Time) Point {
	p := Point{Time: now, Versions: map[string]int{}}
	for _, d := range s.devices {
		if d.status == nil {
			continue
		}
		p.Devices++
		online, seen := d.liveness()
		if !online || s.opts.StaleAfter > 0 && now.Sub(seen) > s.opts.StaleAfter {
			p.Offline++
		}
		for _, a := range d.status.Apps {
			ver := a.Version
			if ver == "" {
				ver = "none"
			}
			p.Versions[a.App+" "+ver]++
			if fleet.Failed(a) {
				p.Failed++
			}
		}
	}
	return p
}

// addPoint appends p to the timeline when it differs from the last point;
// it reports whether it did.
func (s *state) addPoint(p Point) bool {
	if n := len(s.timeline); n > 0 {
		last := s.timeline[n-1]
		if last.Failed == p.Failed && last.Offline == p.Offline && last.Devices == p.Devices && mapsEqual(last.Versions, p.Versions) {
			return false
		}
	}
	if len(s.timeline) >= s.opts.TimelinePoints {
		s.timeline = slices.Delete(s.timeline, 0, len(s.timeline)-s.opts.TimelinePoints+1)
	}
	s.timeline = append(s.timeline, p)
	s.timelineGen++
	return true
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// malformedList is the dropped device messages, sorted, at most
// maxMalformedShown.
func (s *state) malformedList() []Malformed {
	out := make([]Malformed, 0, min(len(s.malformed), maxMalformedShown))
	topics := make([]string, 0, len(s.malformed))
	for t := range s.malformed {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	for _, t := range topics {
		if len(out) == maxMalformedShown {
			break
		}
		out = append(out, Malformed{Topic: protocol.CleanText(t), Error: s.malformed[t]})
	}
	return out
}

// beginResync starts a new epoch: messages delivered from now on are
// current. endResync then forgets whatever was not delivered again (it
// was cleared while the connection was down).
func (s *state) beginResync() { s.epoch++ }

func (s *state) endResync() {
	for id, d := range s.devices {
		changed := false
		if d.status != nil && d.statusEpoch < s.epoch {
			d.status, changed = nil, true
		}
		if d.presence != nil && d.presenceEpoch < s.epoch {
			d.presence, changed = nil, true
		}
		if changed {
			s.touch(id)
		}
	}
	for t, e := range s.retEpoch {
		if e < s.epoch {
			if tp, err := protocol.ParseTopic(t); err == nil && tp.Kind == protocol.KindDesired {
				if d := s.devices[tp.Device]; d != nil {
					delete(d.assigned, tp.App)
					s.touch(tp.Device)
				}
			}
			s.setRetained(t, nil)
		}
	}
}
