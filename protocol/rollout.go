package protocol

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Staged rollouts (SPEC.md §8.8). A rollout is one small retained control
// message per channel and app, written by operators (and the rollout
// driver) only, plus the release envelopes it offers ("candidates"), one
// per profile. Which devices take a candidate is decided by each device
// from a stable hash of its id and the rollout id, compared with the
// rollout's current cut, and from a label selector matched against the
// device's own configured labels: the broker holds a few messages per
// rollout, whatever the fleet's size. Widening a wave raises the cut (it
// only adds devices); halting or pausing freezes it and stops new starts.

// Topic kinds of rollouts.
const (
	KindRollout   TopicKind = "rollout"   // edgefleet/v1/rollout/<channel>/<app>
	KindCandidate TopicKind = "candidate" // edgefleet/v1/rollout/<channel>/<app>/<profile>/manifest
	KindDriver    TopicKind = "driver"    // edgefleet/v1/driver
)

// Rollout states.
const (
	RolloutRunning = "running" // the driver widens the cut wave by wave
	RolloutPaused  = "paused"  // an operator paused it: no device starts the candidate
	RolloutHalted  = "halted"  // too many failures: frozen for good (a fix is a new release)
	RolloutAborted = "aborted" // an operator aborted it: candidates cleared
	RolloutDone    = "done"    // every wave passed: the release was promoted to the channel
)

// Phases a device reports for the rollout it is a member of
// (AppReport.Rollout).
const (
	PhasePending = "pending" // member, working towards the candidate (download, install, trial)
	PhaseWaiting = "waiting" // member, candidate downloaded, waiting for its maintenance window
	PhaseDone    = "done"    // runs the candidate's sequence (or a higher one), committed
	PhaseFailed  = "failed"  // refused, failed to install, or rolled back on trial
	PhaseSkipped = "skipped" // member, but no candidate runs here, or an assignment wins
)

// Limits of rollout messages.
const (
	// MaxRolloutSize bounds a rollout control message.
	MaxRolloutSize = 64 << 10
	// MaxWaves bounds a rollout's waves.
	MaxWaves = 32
	// MaxRolloutFailures bounds the failures a rollout message lists
	// (the counts stay exact).
	MaxRolloutFailures = 32
	// MaxLabels bounds a device's labels and a selector's terms.
	MaxLabels = 16
	// MaxDriverSize bounds a driver presence message.
	MaxDriverSize = 4 << 10
	// FullCut is the cut that includes every device.
	FullCut uint64 = 1 << 32
)

var (
	rolloutIDRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
	labelKeyRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,31}$`)
	labelValueRe = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
)

// ValidRolloutID reports whether s is an acceptable rollout id.
func ValidRolloutID(s string) bool { return rolloutIDRe.MatchString(s) }

// RolloutTopic is the retained control message of channel's rollout of app.
func RolloutTopic(channel, app string) (string, error) {
	if _, err := ReleaseFilter(channel, app); err != nil {
		return "", err
	}
	return Topic{Kind: KindRollout, Channel: channel, App: app}.String(), nil
}

// CandidateTopic is where the rollout of app on channel keeps the release
// envelope it offers for profile.
func CandidateTopic(channel, app, profile string) (string, error) {
	if _, err := ReleaseTopic(channel, app, profile); err != nil {
		return "", err
	}
	return Topic{Kind: KindCandidate, Channel: channel, App: app, Profile: profile}.String(), nil
}

// RolloutFilters are what a device following app on channel subscribes to
// for rollouts: the control message and every profile's candidate.
func RolloutFilters(channel, app string) ([]string, error) {
	t, err := RolloutTopic(channel, app)
	if err != nil {
		return nil, err
	}
	return []string{t, t + "/+/manifest"}, nil
}

// AllRolloutsFilter matches every rollout control message and candidate.
const AllRolloutsFilter = TopicPrefix + "rollout/#"

// DriverTopic is where the rollout driver keeps its retained presence
// (its last will says it is gone).
const DriverTopic = TopicPrefix + "driver"

// Labels are a device's configured labels (site=berlin, hw=rev2): keys
// [a-z0-9][a-z0-9._-]{0,31}, values [A-Za-z0-9._-]{0,63}, at most
// MaxLabels.
type Labels map[string]string

// Validate checks the labels' syntax and count.
func (l Labels) Validate() error {
	if len(l) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d: %w", len(l), MaxLabels, ErrMalformed)
	}
	for k, v := range l {
		if !labelKeyRe.MatchString(k) {
			return fmt.Errorf("label key %q: use lower-case letters, digits, . _ - (at most 32, starting with a letter or digit): %w", clip(k), ErrMalformed)
		}
		if !labelValueRe.MatchString(v) {
			return fmt.Errorf("label %s value %q: use letters, digits, . _ - (at most 63): %w", k, clip(v), ErrMalformed)
		}
	}
	return nil
}

// String is "k1=v1,k2=v2" sorted by key.
func (l Labels) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + l[k]
	}
	return strings.Join(keys, ",")
}

// Selector selects devices by labels: every term must match (a device
// lacking a key does not match). The empty selector matches every device.
type Selector = Labels

// ParseSelector parses "site=berlin,hw=rev2". The empty string is the
// empty selector (every device).
func ParseSelector(s string) (Selector, error) {
	sel := Selector{}
	if strings.TrimSpace(s) == "" {
		return sel, nil
	}
	for _, term := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(term), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("selector term %q: want key=value, e.g. site=berlin: %w", clip(term), ErrMalformed)
		}
		if old, dup := sel[k]; dup && old != v {
			return nil, fmt.Errorf("selector names %s twice (%s and %s): a device has one value per label: %w", k, old, v, ErrMalformed)
		}
		sel[k] = v
	}
	if err := sel.Validate(); err != nil {
		return nil, fmt.Errorf("selector: %w", err)
	}
	return sel, nil
}

// Matches reports whether labels has every key=value of the selector.
func (l Labels) Matches(labels Labels) bool {
	for k, v := range l {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// MemberHash is the device's place in the rollout: the first 4 bytes of
// sha256(rolloutID + "\n" + device) as a big-endian number. It is stable
// for a rollout, independent between rollouts (a device that was first
// in one rollout is not first in the next), and computed the same by the
// device and the driver.
func MemberHash(rolloutID, device string) uint64 {
	h := sha256.Sum256([]byte(rolloutID + "\n" + device))
	return uint64(binary.BigEndian.Uint32(h[:4]))
}

// InCut reports whether device is inside cut for rollout id: its
// MemberHash is below cut (0: nobody, FullCut: everybody).
func InCut(rolloutID, device string, cut uint64) bool {
	return MemberHash(rolloutID, device) < cut
}

// Wave is one step of a rollout: a number of devices (Count) or a
// percentage of the selected devices (Percent, 0 < Percent ≤ 100);
// cumulative, so waves grow.
type Wave struct {
	Count   int     `json:"count,omitempty"`
	Percent float64 `json:"percent,omitempty"`
}

// String is "3" or "25%".
func (w Wave) String() string {
	if w.Percent > 0 {
		return strconv.FormatFloat(w.Percent, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(w.Count)
}

// Size is the number of devices the wave covers out of selected: a count
// as is (at most selected), a percentage rounded up.
func (w Wave) Size(selected int) int {
	if w.Percent > 0 {
		return min(int(math.Ceil(w.Percent*float64(selected)/100-1e-9)), selected)
	}
	return min(w.Count, selected)
}

// WaveSizes is the number of devices each wave covers out of selected,
// cumulative and never shrinking (a percentage after a count may cover
// fewer devices than the count in a small fleet: it then covers as many).
func WaveSizes(waves []Wave, selected int) []int {
	out := make([]int, len(waves))
	for i, w := range waves {
		out[i] = w.Size(selected)
		if i > 0 {
			out[i] = max(out[i], out[i-1])
		}
	}
	return out
}

// ParseWaves parses "1,5%,25%,100%". Waves are cumulative and must grow
// (counts among counts and percentages among percentages strictly
// increase; a count after a percentage is refused, as it may not grow),
// and the last one must be 100%, so that a rollout that passes reaches
// every selected device.
func ParseWaves(s string) ([]Wave, error) {
	parts := strings.Split(s, ",")
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("no waves given: use e.g. 1,5%%,25%%,100%%: %w", ErrMalformed)
	}
	if len(parts) > MaxWaves {
		return nil, fmt.Errorf("%d waves, at most %d: %w", len(parts), MaxWaves, ErrMalformed)
	}
	waves := make([]Wave, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		var w Wave
		if num, ok := strings.CutSuffix(p, "%"); ok {
			f, err := strconv.ParseFloat(num, 64)
			if err != nil || math.IsNaN(f) || f <= 0 || f > 100 {
				return nil, fmt.Errorf("wave %d %q: a percentage must be above 0 and at most 100: %w", i+1, clip(p), ErrMalformed)
			}
			w.Percent = f
		} else {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 || n > 1_000_000 {
				return nil, fmt.Errorf("wave %d %q: want a device count (1 to 1000000) or a percentage like 25%%: %w", i+1, clip(p), ErrMalformed)
			}
			w.Count = n
		}
		if i > 0 {
			prev := waves[i-1]
			switch {
			case prev.Percent > 0 && w.Percent == 0:
				return nil, fmt.Errorf("wave %d (%s) is a count after a percentage (%s): it need not grow; give the later waves as percentages: %w", i+1, w, prev, ErrMalformed)
			case w.Percent > 0 && prev.Percent > 0 && w.Percent <= prev.Percent,
				w.Count > 0 && w.Count <= prev.Count:
				return nil, fmt.Errorf("waves must grow: wave %d (%s) is not larger than wave %d (%s); waves are cumulative, e.g. 1,5%%,25%%,100%%: %w", i+1, w, i, prev, ErrMalformed)
			}
		}
		waves = append(waves, w)
	}
	if last := waves[len(waves)-1]; last.Percent != 100 {
		return nil, fmt.Errorf("the last wave is %s: it must be 100%% so that a rollout that passes reaches every selected device (pause it to stop earlier): %w", last, ErrMalformed)
	}
	return waves, nil
}

// ParseShare parses a failure threshold: "10%" or "0.1" (a fraction);
// 0 ≤ share ≤ 1.
func ParseShare(s string) (float64, error) {
	t := strings.TrimSpace(s)
	div := 1.0
	if num, ok := strings.CutSuffix(t, "%"); ok {
		t, div = num, 100
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f/div > 1 {
		return 0, fmt.Errorf("%q is not a share between 0%% and 100%% (write 10%% or 0.1): %w", clip(s), ErrMalformed)
	}
	return f / div, nil
}

// RolloutFailure is one device that failed the rollout, and why.
type RolloutFailure struct {
	Device string `json:"device"`
	Wave   int    `json:"wave"` // 1-based wave the device entered in
	Reason string `json:"reason"`
}

// RolloutCounts are the driver's counts of the selected devices.
type RolloutCounts struct {
	Selected int `json:"selected"` // devices the driver knows that follow the channel and match the selector
	Members  int `json:"members"`  // of those, inside the cut
	Done     int `json:"done"`
	Failed   int `json:"failed"`  // failed, refused, rolled back, or timed out
	Pending  int `json:"pending"` // members without an outcome yet
	Waiting  int `json:"waiting"` // members waiting for their maintenance window
	Skipped  int `json:"skipped"` // members for which no candidate runs, or with an assignment
}

// Rollout is the retained control message of a staged rollout (SPEC.md
// §8.8). Devices read ID, Channel, App, Sequence, Select, State and Cut;
// the rest is the driver's memory and the operator's view.
type Rollout struct {
	Schema   int      `json:"schema"`
	ID       string   `json:"id"`
	Channel  string   `json:"channel"`
	App      string   `json:"app"`
	Version  string   `json:"version"`
	Sequence uint64   `json:"sequence"`
	Profiles []string `json:"profiles"`
	Select   Selector `json:"select,omitempty"`
	// Policy.
	Waves                []Wave  `json:"waves"`
	MaxFailures          float64 `json:"max_failures"` // share 0..1 of executed devices
	MinExecuted          int     `json:"min_executed"`
	BakeSeconds          int64   `json:"bake_seconds"`
	DeviceTimeoutSeconds int64   `json:"device_timeout_seconds"`
	// Where it stands.
	State string `json:"state"`
	Wave  int    `json:"wave"` // index into Waves of the current wave
	Cut   uint64 `json:"cut"`  // 0..FullCut: devices whose MemberHash is below it are members
	// Cuts[i] and WaveStarted[i] are wave i's cut and start; len = Wave+1.
	Cuts        []uint64    `json:"cuts"`
	WaveStarted []time.Time `json:"wave_started"`
	// BakeFrom is when the current wave met its success condition (zero
	// while it has not): the next wave starts BakeSeconds later.
	BakeFrom time.Time `json:"bake_from,omitzero"`
	// Resumed is when an operator last resumed the rollout (zero if
	// never): device timeouts and the bake count from it at the earliest,
	// so time spent paused never counts against a device or a wave.
	Resumed time.Time `json:"resumed,omitzero"`
	// Revision grows by one with every write of the message, by the
	// driver or an operator command; a writer starts from the revision
	// it read. The driver adopts a message it did not write (an
	// operator's, Driver ""), so an operator's state change is never
	// overwritten by the driver's stale copy (SPEC.md §8.8).
	Revision uint64           `json:"revision,omitempty"`
	Reason   string           `json:"reason,omitempty"` // one line: why it is paused, halted, aborted, or what it waits for
	Counts   RolloutCounts    `json:"counts"`
	Failures []RolloutFailure `json:"failures,omitempty"`
	Created  time.Time        `json:"created"`
	Updated  time.Time        `json:"updated"`
	// Driver is the instance of the driver that last wrote the message
	// ("" when an operator command did).
	Driver string `json:"driver,omitempty"`
}

// Validate checks syntax and limits.
func (r *Rollout) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("rollout: "+format+": %w", append(a, ErrMalformed)...)
	}
	if r.Schema != MQTTSchemaVersion {
		return fmt.Errorf("rollout schema %d, this build understands %d: %w", r.Schema, MQTTSchemaVersion, ErrSchema)
	}
	if !ValidRolloutID(r.ID) {
		return bad("id %q is not valid (lower-case letters, digits, '-', at most 64)", clip(r.ID))
	}
	if !ValidChannel(r.Channel) || !ValidApp(r.App) {
		return bad("channel %q or app %q is not valid", clip(r.Channel), clip(r.App))
	}
	if r.Version == "" || len(r.Version) > MaxVersionLen || r.Sequence == 0 {
		return bad("version must be 1..%d bytes and sequence positive", MaxVersionLen)
	}
	if len(r.Profiles) == 0 || len(r.Profiles) > 64 {
		return bad("%d profiles, want 1..64", len(r.Profiles))
	}
	for _, p := range r.Profiles {
		if !ValidProfileName(p) {
			return bad("profile %q is not valid", clip(p))
		}
	}
	if err := r.Select.Validate(); err != nil {
		return fmt.Errorf("rollout select: %w", err)
	}
	if len(r.Waves) == 0 || len(r.Waves) > MaxWaves {
		return bad("%d waves, want 1..%d", len(r.Waves), MaxWaves)
	}
	for _, w := range r.Waves {
		if (w.Count > 0) == (w.Percent > 0) || w.Count < 0 || w.Percent < 0 || w.Percent > 100 || math.IsNaN(w.Percent) {
			return bad("wave %+v: want a count or a percentage in (0, 100]", w)
		}
	}
	if math.IsNaN(r.MaxFailures) || r.MaxFailures < 0 || r.MaxFailures > 1 {
		return bad("max_failures %v is not a share in [0, 1]", r.MaxFailures)
	}
	if r.MinExecuted < 0 || r.BakeSeconds < 0 || r.DeviceTimeoutSeconds < 0 {
		return bad("min_executed, bake_seconds and device_timeout_seconds cannot be negative")
	}
	switch r.State {
	case RolloutRunning, RolloutPaused, RolloutHalted, RolloutAborted, RolloutDone:
	default:
		return bad("state %q is not running, paused, halted, aborted or done", clip(r.State))
	}
	if r.Wave < 0 || r.Wave >= len(r.Waves) {
		return bad("wave %d out of range", r.Wave)
	}
	if r.Cut > FullCut {
		return bad("cut %d is above %d", r.Cut, FullCut)
	}
	if len(r.Cuts) > len(r.Waves) || len(r.WaveStarted) > len(r.Waves) {
		return bad("more cuts or wave starts than waves")
	}
	for _, c := range r.Cuts {
		if c > FullCut {
			return bad("cut %d is above %d", c, FullCut)
		}
	}
	if len(r.Reason) > MaxLastError {
		return bad("reason longer than %d", MaxLastError)
	}
	if len(r.Failures) > MaxRolloutFailures {
		return bad("%d failures listed, at most %d", len(r.Failures), MaxRolloutFailures)
	}
	for _, f := range r.Failures {
		if !ValidDeviceID(f.Device) || len(f.Reason) > MaxLastError {
			return bad("failure of %q: bad device id or reason longer than %d", clip(f.Device), MaxLastError)
		}
	}
	if len(r.Driver) > 128 {
		return bad("driver longer than 128")
	}
	return nil
}

// Member reports whether a device with labels is a member of the rollout
// now: it matches the selector and is inside the cut. State is not
// considered (a paused rollout still has members; they do not start).
func (r *Rollout) Member(device string, labels Labels) bool {
	return r.Select.Matches(labels) && InCut(r.ID, device, r.Cut)
}

// Active reports whether members may start (or go on with) the
// candidate: the rollout is running.
func (r *Rollout) Active() bool { return r.State == RolloutRunning }

// Marshal cleans the free text, validates and encodes the message.
func (r *Rollout) Marshal() ([]byte, error) {
	r.Reason = clipText(cleanText(r.Reason), MaxLastError)
	for i := range r.Failures {
		r.Failures[i].Reason = clipText(cleanText(r.Failures[i].Reason), MaxLastError)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRolloutSize {
		return nil, fmt.Errorf("rollout message is %d bytes, more than %d: %w", len(b), MaxRolloutSize, ErrTooLarge)
	}
	return b, nil
}

// ParseRollout decodes a rollout control message strictly. An empty
// message means there is no rollout (callers check len(b) == 0 first).
func ParseRollout(b []byte) (*Rollout, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("rollout message is empty (no rollout): %w", ErrMalformed)
	}
	if len(b) > MaxRolloutSize {
		return nil, fmt.Errorf("rollout message is %d bytes, more than the %d allowed: %w", len(b), MaxRolloutSize, ErrTooLarge)
	}
	if err := checkSchema(b, "rollout message"); err != nil {
		return nil, err
	}
	var r Rollout
	if err := strictJSON(b, &r); err != nil {
		return nil, fmt.Errorf("rollout message: %v: %w", err, ErrMalformed)
	}
	r.Reason = cleanText(r.Reason)
	for i := range r.Failures {
		r.Failures[i].Reason = cleanText(r.Failures[i].Reason)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// RolloutReport is what a member device says about the rollout it is in
// (AppReport.Rollout).
type RolloutReport struct {
	ID    string `json:"id"`
	Phase string `json:"phase"`
	// Error says why the device failed (PhaseFailed) or skips
	// (PhaseSkipped).
	Error string `json:"error,omitempty"`
}

func (r *RolloutReport) validate() error {
	if !ValidRolloutID(r.ID) {
		return fmt.Errorf("rollout id %q is not valid", clip(r.ID))
	}
	switch r.Phase {
	case PhasePending, PhaseWaiting, PhaseDone, PhaseFailed, PhaseSkipped:
	default:
		return fmt.Errorf("rollout phase %q is not pending, waiting, done, failed or skipped", clip(r.Phase))
	}
	if len(r.Error) > MaxLastError {
		return fmt.Errorf("rollout error longer than %d", MaxLastError)
	}
	return nil
}

// DriverPresence is the rollout driver's retained presence on
// DriverTopic; its last will is the same with Online false. Instance is
// random per driver process: a driver that sees another instance online
// stops driving, so two drivers never drive the same rollouts.
type DriverPresence struct {
	Schema   int       `json:"schema"`
	Instance string    `json:"instance"`
	Host     string    `json:"host,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Online   bool      `json:"online"`
	Since    time.Time `json:"since"`
	Time     time.Time `json:"time"`
}

// Marshal validates and encodes the presence.
func (d *DriverPresence) Marshal() ([]byte, error) {
	d.Host = clipText(cleanText(d.Host), 128)
	if err := d.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(d)
}

func (d *DriverPresence) validate() error {
	if d.Schema != MQTTSchemaVersion {
		return fmt.Errorf("driver presence schema %d, this build understands %d: %w", d.Schema, MQTTSchemaVersion, ErrSchema)
	}
	if d.Instance == "" || len(d.Instance) > 64 || len(d.Host) > 128 {
		return fmt.Errorf("driver presence: instance must be 1..64 bytes and host at most 128: %w", ErrMalformed)
	}
	return nil
}

// ParseDriverPresence decodes a driver presence message strictly.
func ParseDriverPresence(b []byte) (*DriverPresence, error) {
	if len(b) > MaxDriverSize {
		return nil, fmt.Errorf("driver presence is %d bytes, more than %d: %w", len(b), MaxDriverSize, ErrTooLarge)
	}
	if err := checkSchema(b, "driver presence"); err != nil {
		return nil, err
	}
	var d DriverPresence
	if err := strictJSON(b, &d); err != nil {
		return nil, fmt.Errorf("driver presence: %v: %w", err, ErrMalformed)
	}
	d.Host = cleanText(d.Host)
	if err := d.validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// clipText cuts s to at most n bytes on a character boundary, marking
// the cut with "...".
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	m := n - 3
	for m > 0 && s[m]&0xC0 == 0x80 {
		m--
	}
	return s[:m] + "..."
}
