package fleet

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// The rollout engine is the driver's pure state machine (SPEC.md §8.8,
// "Rules the driver applies"): it is fed the rollout's control message,
// device statuses and presence, and the clock, and decides counts,
// failures, halting, bake and the next cut. It does no I/O. Each status
// costs O(waves): the engine keeps one small record per selected device
// and running counts per wave; only advancing a wave (sorting the member
// hashes) and a timeout sweep (Tick) touch every device.

// device classes in a rollout.
const (
	clsOut      uint8 = iota // selected, not inside the cut
	clsPending               // member without an outcome
	clsWaiting               // member waiting for its maintenance window
	clsDone                  // member, committed the candidate (or a higher sequence)
	clsFailed                // member, reported failed
	clsTimedOut              // member, no outcome within the device timeout
	clsSkipped               // member, no candidate runs there (counts neither way)
	numCls
)

// reported phases (what the device said, before timeouts).
const (
	repNone uint8 = iota // no report for this rollout
	repPending
	repWaiting
	repDone
	repFailed
	repSkipped
)

// rdev is what the engine keeps per selected device.
type rdev struct {
	id          string
	hash        uint32
	wave        int8 // wave the device entered in, -1 outside the cut
	cls, rep    uint8
	online      bool
	windowOpens time.Time // set with repWaiting
	reason      string    // the device's error with repFailed / repSkipped
}

// RolloutEngine applies the driver's rules to one rollout. It is not safe
// for concurrent use (the driver owns it on one goroutine).
type RolloutEngine struct {
	r    protocol.Rollout
	devs map[string]*rdev
	cnt  [numCls]int
	wcnt [][numCls]int // per wave
	// stateGen changes when what devices act on, or the rollout's
	// standing, changes (state, wave, cut, bake, reason); countGen when
	// only counts or failures change. The driver publishes the first at
	// once and throttles the second.
	stateGen, countGen uint64
	promote            bool
	// offline counts members without an outcome that are offline (for the
	// reason line).
}

// NewRolloutEngine starts an engine from a control message (copied).
func NewRolloutEngine(r *protocol.Rollout) *RolloutEngine {
	e := &RolloutEngine{devs: map[string]*rdev{}}
	e.adopt(r)
	return e
}

func (e *RolloutEngine) adopt(r *protocol.Rollout) {
	e.r = *r
	e.r.Waves = slices.Clone(r.Waves)
	e.r.Cuts = slices.Clone(r.Cuts)
	e.r.WaveStarted = slices.Clone(r.WaveStarted)
	e.r.Profiles = slices.Clone(r.Profiles)
	e.r.Failures = nil
	e.wcnt = make([][numCls]int, len(e.r.Waves))
	e.cnt = [numCls]int{}
	e.promote = false
	for _, d := range e.devs {
		d.wave, d.cls = -1, clsOut
		d.hash = uint32(protocol.MemberHash(e.r.ID, d.id))
		e.cnt[clsOut]++
	}
	e.stateGen++
	e.countGen++
}

// Adopt replaces the control state with a message the engine did not
// write (an operator's command, or an earlier driver instance's state),
// keeping what it knows of the devices, and re-derives every device's
// class at now. The rollout id must be the same (a new id is a new
// rollout: make a new engine).
func (e *RolloutEngine) Adopt(r *protocol.Rollout, now time.Time) {
	e.adopt(r)
	for _, d := range e.devs {
		e.place(d, now)
	}
	e.refillFailures()
	e.Evaluate(now)
}

// Rollout returns a copy of the control message with the current counts.
func (e *RolloutEngine) Rollout() *protocol.Rollout {
	r := e.r
	r.Waves = slices.Clone(e.r.Waves)
	r.Cuts = slices.Clone(e.r.Cuts)
	r.WaveStarted = slices.Clone(e.r.WaveStarted)
	r.Failures = slices.Clone(e.r.Failures)
	r.Profiles = slices.Clone(e.r.Profiles)
	r.Counts = e.Counts()
	return &r
}

// ID is the rollout's id.
func (e *RolloutEngine) ID() string { return e.r.ID }

// State is the rollout's state.
func (e *RolloutEngine) State() string { return e.r.State }

// Generations are the state and count generations (see RolloutEngine).
func (e *RolloutEngine) Generations() (state, counts uint64) { return e.stateGen, e.countGen }

// ReadyToPromote reports that the last wave completed and baked: the
// driver publishes the candidates to the channel and calls MarkDone.
func (e *RolloutEngine) ReadyToPromote() bool {
	return e.promote && e.r.State == protocol.RolloutRunning
}

// Counts are the current counts of the selected devices.
func (e *RolloutEngine) Counts() protocol.RolloutCounts {
	c := e.cnt
	return protocol.RolloutCounts{
		Selected: len(e.devs),
		Members:  len(e.devs) - c[clsOut],
		Done:     c[clsDone],
		Failed:   c[clsFailed] + c[clsTimedOut],
		Pending:  c[clsPending],
		Waiting:  c[clsWaiting],
		Skipped:  c[clsSkipped],
	}
}

// selects reports whether status s is one of the rollout's selected
// devices: it follows the channel, lists the app and matches the
// selector. It returns the app's report.
func (e *RolloutEngine) selects(s *protocol.DeviceStatus) (*protocol.AppReport, bool) {
	if s.Channel != e.r.Channel || !e.r.Select.Matches(s.Labels) {
		return nil, false
	}
	for i := range s.Apps {
		if s.Apps[i].App == e.r.App {
			return &s.Apps[i], true
		}
	}
	return nil, false
}

// Update applies a device's status (nil: the status was cleared) at now.
// Online is the device's liveness (from its presence when it has one).
func (e *RolloutEngine) Update(device string, s *protocol.DeviceStatus, online bool, now time.Time) {
	var a *protocol.AppReport
	sel := false
	if s != nil {
		a, sel = e.selects(s)
	}
	d := e.devs[device]
	if !sel {
		if d != nil {
			e.setCls(d, clsOut)
			e.cnt[clsOut]--
			delete(e.devs, device)
			e.countGen++
		}
		e.Evaluate(now)
		return
	}
	if d == nil {
		d = &rdev{id: device, hash: uint32(protocol.MemberHash(e.r.ID, device)), wave: -1}
		e.devs[device] = d
		e.cnt[clsOut]++
		e.countGen++
	}
	d.online = online
	d.rep, d.reason, d.windowOpens = e.report(a)
	e.place(d, now)
	e.Evaluate(now)
}

// SetOnline records a device's presence.
func (e *RolloutEngine) SetOnline(device string, online bool) {
	if d := e.devs[device]; d != nil {
		d.online = online
	}
}

// report reads the device's phase in this rollout from its app report.
func (e *RolloutEngine) report(a *protocol.AppReport) (uint8, string, time.Time) {
	if ro := a.Rollout; ro != nil && ro.ID == e.r.ID {
		switch ro.Phase {
		case protocol.PhaseDone:
			return repDone, "", time.Time{}
		case protocol.PhaseFailed:
			reason := ro.Error
			if reason == "" {
				reason = a.LastError
			}
			if reason == "" {
				reason = "reported failed without saying why"
			}
			// The app's recent output, which the agent appends to a
			// failed trial's reason, stays in the device's status: the
			// rollout's line is for acting on.
			reason, _, _ = strings.Cut(reason, "; last output:")
			return repFailed, reason, time.Time{}
		case protocol.PhaseSkipped:
			return repSkipped, ro.Error, time.Time{}
		case protocol.PhaseWaiting:
			var w time.Time
			if a.WindowOpens != nil {
				w = *a.WindowOpens
			}
			return repWaiting, "", w
		case protocol.PhasePending:
			return repPending, "", time.Time{}
		}
	}
	// A device that already runs the candidate's sequence or a higher one
	// (an assignment, an earlier rollout, an agent without rollout
	// support) is done.
	if a.State == "committed" && a.Sequence >= e.r.Sequence {
		return repDone, "", time.Time{}
	}
	return repNone, "", time.Time{}
}

// waveOf is the wave a hash entered in, -1 outside the cut.
func (e *RolloutEngine) waveOf(h uint32) int8 {
	if uint64(h) >= e.r.Cut {
		return -1
	}
	for i, c := range e.r.Cuts {
		if uint64(h) < c {
			return int8(i)
		}
	}
	return int8(e.r.Wave) // a cut without a Cuts entry (hand-written message)
}

// deadline is when a member without an outcome times out (zero: never).
func (e *RolloutEngine) deadline(d *rdev) time.Time {
	if e.r.DeviceTimeoutSeconds <= 0 || d.wave < 0 {
		return time.Time{}
	}
	base := e.r.Created
	if int(d.wave) < len(e.r.WaveStarted) {
		base = e.r.WaveStarted[d.wave]
	}
	if e.r.Resumed.After(base) {
		base = e.r.Resumed
	}
	if d.rep == repWaiting && d.windowOpens.After(base) {
		base = d.windowOpens
	}
	return base.Add(time.Duration(e.r.DeviceTimeoutSeconds) * time.Second)
}

// place derives d's wave and class from its report, the cut and the
// clock.
func (e *RolloutEngine) place(d *rdev, now time.Time) {
	w := e.waveOf(d.hash)
	if w != d.wave {
		e.setCls(d, clsOut)
		d.wave = w
	}
	cls := clsOut
	if w >= 0 {
		switch d.rep {
		case repDone:
			cls = clsDone
		case repFailed:
			cls = clsFailed
		case repSkipped:
			cls = clsSkipped
		case repWaiting:
			cls = clsWaiting
		default:
			cls = clsPending
		}
		if (cls == clsPending || cls == clsWaiting) && e.r.State == protocol.RolloutRunning {
			if dl := e.deadline(d); !dl.IsZero() && !now.Before(dl) {
				cls = clsTimedOut
				d.reason = e.timeoutReason(d)
			}
		}
	}
	e.setCls(d, cls)
}

func (e *RolloutEngine) timeoutReason(d *rdev) string {
	t := ShortDuration(time.Duration(e.r.DeviceTimeoutSeconds) * time.Second)
	why := "no report within " + t
	if d.rep == repWaiting {
		why += " of its maintenance window opening"
	}
	if !d.online {
		why += " (offline)"
	}
	return why
}

// setCls moves d to class cls, keeping the counts and the failures list.
func (e *RolloutEngine) setCls(d *rdev, cls uint8) {
	old := d.cls
	wasFailed := old == clsFailed || old == clsTimedOut
	isFailed := cls == clsFailed || cls == clsTimedOut
	if old == cls {
		if isFailed {
			e.updateFailure(d)
		}
		return
	}
	e.cnt[old]--
	e.cnt[cls]++
	if d.wave >= 0 && int(d.wave) < len(e.wcnt) {
		e.wcnt[d.wave][old]--
		e.wcnt[d.wave][cls]++
	}
	d.cls = cls
	e.countGen++
	switch {
	case isFailed && !wasFailed:
		if len(e.r.Failures) < protocol.MaxRolloutFailures {
			e.r.Failures = append(e.r.Failures, protocol.RolloutFailure{Device: d.id, Wave: int(d.wave) + 1, Reason: d.reason})
		}
	case isFailed:
		e.updateFailure(d)
	case wasFailed:
		if i := e.failureIndex(d.id); i >= 0 {
			e.r.Failures = slices.Delete(e.r.Failures, i, i+1)
			if e.cnt[clsFailed]+e.cnt[clsTimedOut] > len(e.r.Failures) {
				e.refillFailures()
			}
		}
	}
}

func (e *RolloutEngine) failureIndex(id string) int {
	for i := range e.r.Failures {
		if e.r.Failures[i].Device == id {
			return i
		}
	}
	return -1
}

func (e *RolloutEngine) updateFailure(d *rdev) {
	if i := e.failureIndex(d.id); i >= 0 && e.r.Failures[i].Reason != d.reason {
		e.r.Failures[i].Reason = d.reason
		e.countGen++
	}
}

// refillFailures lists failed devices up to the limit, keeping those
// listed (a scan of every device: only when a listed failure went away
// with more failures unlisted, or on adopt).
func (e *RolloutEngine) refillFailures() {
	for _, d := range e.devs {
		if len(e.r.Failures) >= protocol.MaxRolloutFailures {
			break
		}
		if (d.cls == clsFailed || d.cls == clsTimedOut) && e.failureIndex(d.id) < 0 {
			e.r.Failures = append(e.r.Failures, protocol.RolloutFailure{Device: d.id, Wave: int(d.wave) + 1, Reason: d.reason})
		}
	}
	slices.SortStableFunc(e.r.Failures, func(a, b protocol.RolloutFailure) int { return a.Wave - b.Wave })
}

// Tick applies the clock: device timeouts, the bake, the next wave.
func (e *RolloutEngine) Tick(now time.Time) {
	if e.r.State == protocol.RolloutRunning && e.r.DeviceTimeoutSeconds > 0 && e.cnt[clsPending]+e.cnt[clsWaiting] > 0 {
		for _, d := range e.devs {
			if d.cls == clsPending || d.cls == clsWaiting {
				if dl := e.deadline(d); !dl.IsZero() && !now.Before(dl) {
					e.place(d, now)
				}
			}
		}
	}
	e.Evaluate(now)
}

// Evaluate applies the halting, completion and bake rules at now.
func (e *RolloutEngine) Evaluate(now time.Time) {
	r := &e.r
	if r.State != protocol.RolloutRunning && r.State != protocol.RolloutPaused {
		return
	}
	if why := e.haltReason(); why != "" {
		e.setState(protocol.RolloutHalted, why, now)
		return
	}
	if r.State != protocol.RolloutRunning {
		return
	}
	// Complete: every member has an outcome, and the cut holds someone
	// (a cut that, for the devices known now, holds nobody waits for
	// them, rather than passing a wave nobody ran).
	members := len(e.devs) - e.cnt[clsOut]
	complete := e.cnt[clsPending]+e.cnt[clsWaiting] == 0 && (members > 0 || len(e.devs) == 0)
	switch {
	case !complete && !r.BakeFrom.IsZero():
		r.BakeFrom = time.Time{}
		e.stateGen++
	case complete && r.BakeFrom.IsZero():
		r.BakeFrom = now
		e.stateGen++
	}
	if !complete {
		e.setReason(e.progressReason())
		return
	}
	bakeEnd := e.bakeEnd()
	if now.Before(bakeEnd) {
		e.setReason(e.progressReason())
		return
	}
	if r.Wave == len(r.Waves)-1 {
		if !e.promote {
			e.promote = true
			e.stateGen++
		}
		e.setReason(fmt.Sprintf("every wave passed: publishing %s %s to channel %s", r.App, r.Version, r.Channel))
		return
	}
	e.advance(now)
}

func (e *RolloutEngine) bakeEnd() time.Time {
	base := e.r.BakeFrom
	if e.r.Resumed.After(base) {
		base = e.r.Resumed
	}
	return base.Add(time.Duration(e.r.BakeSeconds) * time.Second)
}

// haltReason says why the rollout must halt now, or "".
func (e *RolloutEngine) haltReason() string {
	r := &e.r
	failed := e.cnt[clsFailed] + e.cnt[clsTimedOut]
	if failed == 0 {
		return ""
	}
	exec := e.cnt[clsDone] + failed
	if exec >= r.MinExecuted && float64(failed)/float64(exec) > r.MaxFailures {
		return e.haltLine(failed, exec)
	}
	for i := 0; i <= r.Wave && i < len(e.wcnt); i++ {
		w := &e.wcnt[i]
		f := w[clsFailed] + w[clsTimedOut]
		if f == 0 || w[clsPending]+w[clsWaiting] > 0 {
			continue
		}
		x := w[clsDone] + f
		if float64(f)/float64(x) > r.MaxFailures {
			return e.haltLine(f, x)
		}
	}
	return ""
}

func (e *RolloutEngine) haltLine(failed, exec int) string {
	r := &e.r
	msg := fmt.Sprintf("halted in wave %d: %d of %d devices failed (more than %s)", r.Wave+1, failed, exec, sharePercent(r.MaxFailures))
	if n := len(r.Failures); n > 0 {
		f := r.Failures[n-1]
		msg += ": " + f.Device + ": " + f.Reason
	}
	return msg
}

func (e *RolloutEngine) progressReason() string {
	r := &e.r
	c := e.Counts()
	s := fmt.Sprintf("wave %d of %d: %d of %d done", r.Wave+1, len(r.Waves), c.Done, c.Members)
	if c.Failed > 0 {
		s += fmt.Sprintf(", %d failed", c.Failed)
	}
	if c.Waiting > 0 {
		s += fmt.Sprintf(", %d waiting for their window", c.Waiting)
	}
	if c.Skipped > 0 {
		s += fmt.Sprintf(", %d skipped", c.Skipped)
	}
	if !r.BakeFrom.IsZero() {
		next := "the next wave"
		if r.Wave == len(r.Waves)-1 {
			next = "promotion to the channel"
		}
		s += fmt.Sprintf("; baking, %s at %s", next, e.bakeEnd().UTC().Format("15:04:05Z"))
	}
	return s
}

func (e *RolloutEngine) setReason(s string) {
	if e.r.Reason != s {
		e.r.Reason = s
		e.countGen++
	}
}

func (e *RolloutEngine) setState(state, reason string, now time.Time) {
	e.r.State, e.r.Reason = state, reason
	e.promote = false
	e.stateGen++
}

// advance starts the next wave: the cut goes just above the last device
// the wave should hold (sorted member hashes of the selected devices), or
// to FullCut for a 100% wave, and never falls.
func (e *RolloutEngine) advance(now time.Time) {
	r := &e.r
	next := r.Wave + 1
	hashes := make([]uint32, 0, len(e.devs))
	for _, d := range e.devs {
		hashes = append(hashes, d.hash)
	}
	cut := waveCut(hashes, r.Waves, next)
	cut = max(cut, r.Cut)
	r.Wave = next
	r.Cut = cut
	r.Cuts = append(r.Cuts[:min(len(r.Cuts), next)], cut)
	for len(r.WaveStarted) < next {
		r.WaveStarted = append(r.WaveStarted, now)
	}
	r.WaveStarted = append(r.WaveStarted[:next], now)
	r.BakeFrom = time.Time{}
	e.stateGen++
	for _, d := range e.devs {
		if d.wave < 0 && uint64(d.hash) < cut {
			e.place(d, now)
		}
	}
	e.setReason(e.progressReason())
	e.Evaluate(now)
}

// waveCut is the cut that makes wave hold WaveSizes' number of the
// devices whose member hashes are given (hashes is sorted in place).
func waveCut(hashes []uint32, waves []protocol.Wave, wave int) uint64 {
	if waves[wave].Percent >= 100 {
		return protocol.FullCut
	}
	slices.Sort(hashes)
	n := protocol.WaveSizes(waves, len(hashes))[wave]
	if n == 0 {
		return 0
	}
	return uint64(hashes[n-1]) + 1
}

// WaveCut is the cut of wave (0-based) of rollout id over the given
// selected devices: what `rollout start` publishes for the first wave.
func WaveCut(id string, devices []string, waves []protocol.Wave, wave int) uint64 {
	h := make([]uint32, len(devices))
	for i, d := range devices {
		h[i] = uint32(protocol.MemberHash(id, d))
	}
	return waveCut(h, waves, wave)
}

// MarkDone records that the candidates were published to the channel.
func (e *RolloutEngine) MarkDone(reason string, now time.Time) {
	e.setState(protocol.RolloutDone, reason, now)
}

// Stamp records a write by the driver: the revision grows, Driver and
// Updated are set. It returns the message to publish.
func (e *RolloutEngine) Stamp(driver string, now time.Time) *protocol.Rollout {
	e.r.Revision++
	e.r.Driver = driver
	e.r.Updated = now.UTC()
	return e.Rollout()
}

// Revision is the revision of the engine's control state.
func (e *RolloutEngine) Revision() uint64 { return e.r.Revision }

// Members lists the ids of the member devices (for tests and status).
func (e *RolloutEngine) Members() []string {
	var out []string
	for id, d := range e.devs {
		if d.wave >= 0 {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func sharePercent(f float64) string {
	return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.2f", f*100), "0"), ".0") + "%"
}

// ShortDuration prints 30m, 1h30m, 45s, 1m30s.
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Command applies an operator's control message for this rollout (Driver
// ""): pause of a running rollout, resume of a paused one, abort of any
// that is not done. It reports whether the state change was taken; one
// that is not (resume of a halted rollout, anything after done) leaves
// the engine's state, to be written again. Only the state, its reason
// and Resumed are taken: wave, cut and the rest stay the engine's, since
// the operator's copy may be stale and cuts never fall.
func (e *RolloutEngine) Command(r *protocol.Rollout, now time.Time) bool {
	cur := e.r.State
	e.r.Revision = max(e.r.Revision, r.Revision)
	if r.State == cur {
		if r.Resumed.After(e.r.Resumed) {
			e.r.Resumed = r.Resumed
			e.stateGen++
		}
		return true
	}
	ok := false
	switch r.State {
	case protocol.RolloutPaused:
		ok = cur == protocol.RolloutRunning
	case protocol.RolloutRunning:
		ok = cur == protocol.RolloutPaused
	case protocol.RolloutAborted:
		ok = cur != protocol.RolloutDone
	}
	e.stateGen++ // written again either way, stamped by the driver
	if !ok {
		return false
	}
	if r.Resumed.After(e.r.Resumed) {
		e.r.Resumed = r.Resumed
	}
	e.setState(r.State, r.Reason, now)
	e.Evaluate(now)
	return true
}
