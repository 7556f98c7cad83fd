package agent

// Rollout membership on the device (protocol/SPEC.md §8.8). The device
// follows, per app, its channel's rollout control message and the
// candidates it offers; whether the device is a member is its own
// decision (protocol.Rollout.Member: a stable hash of its id under the
// rollout's cut, and the selector matched against its configured
// labels), so it holds offline and costs the broker nothing per device.
// A member of a running rollout treats the candidate for a profile as the
// channel's release for that profile (an assignment still wins); when the
// rollout pauses, halts or is aborted it starts nothing new and abandons
// a download of the candidate, while an install that began finishes. The
// device reports its phase (pending, waiting, done, failed, skipped) in
// apps[].rollout; "failed" is derived from the state database (the
// rolled-back history event, the failed state) so that it survives a
// restart of the agent.

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/edgefleet/edgefleet/protocol"
)

// rolloutMessage handles the rollout control message of an app: parsed
// strictly; a bad one is dropped and logged and the view stays as it was.
func (t *mqttTransport) rolloutMessage(ctx context.Context, tp protocol.Topic, topic string, payload []byte) {
	ap := t.apps[tp.App]
	if ap == nil || tp.Channel != t.cfg.Broker.Channel {
		return
	}
	var ro *protocol.Rollout
	if len(payload) > 0 {
		r, err := protocol.ParseRollout(payload)
		if err == nil && (r.Channel != tp.Channel || r.App != tp.App) {
			err = fmt.Errorf("it names channel %q and app %q, not those of its topic: %w", r.Channel, r.App, protocol.ErrMalformed)
		}
		if err != nil {
			t.stats.Dropped.Add(1)
			t.logf("mqtt: dropped the rollout message on %s: %v", topic, err)
			return
		}
		ro = r
	}
	if ap.pending != nil {
		ap.pendingRollout = ro // a sync round: decide when it is complete
		return
	}
	ap.rollout = ro
	t.logRollout(ap)
	t.evaluate(ctx, ap)
}

// candidateMessage handles a rollout's release envelope for one profile:
// verified with the keyring exactly like a channel release.
func (t *mqttTransport) candidateMessage(ctx context.Context, tp protocol.Topic, topic string, payload []byte) {
	ap := t.apps[tp.App]
	if ap == nil || tp.Channel != t.cfg.Broker.Channel {
		return
	}
	rel := t.parseRelease(ap, topic, payload)
	if rel == nil && len(payload) > 0 {
		return
	}
	view := ap.candidates
	if ap.pending != nil {
		view = ap.pendingCandidates
	}
	if rel == nil {
		delete(view, tp.Profile)
	} else {
		rel.candidate = true
		view[tp.Profile] = rel
	}
	if ap.pending != nil {
		return
	}
	if rel != nil {
		t.redelivered(ap, rel)
	}
	t.evaluate(ctx, ap)
}

// member reports whether this device is a member of ro.
func (t *mqttTransport) member(ro *protocol.Rollout) bool {
	return ro != nil && ro.Member(t.cfg.DeviceID, t.cfg.Labels)
}

// releases is what the device chooses from: the channel's releases, with
// the candidates of a running rollout the device is a member of in place
// of the channel's release for their profiles.
func (t *mqttTransport) releases(ap *mqttApp) map[string]*mqttRelease {
	if ro := ap.rollout; ro == nil || !ro.Active() || !t.member(ro) {
		return ap.channel
	}
	return t.overlay(ap)
}

// overlay is the channel's releases with the rollout's candidates over
// them; only candidates with the rollout's sequence count (a candidate
// left over from another rollout is not this one's).
func (t *mqttTransport) overlay(ap *mqttApp) map[string]*mqttRelease {
	ro := ap.rollout
	if ro == nil || len(ap.candidates) == 0 {
		return ap.channel
	}
	out := make(map[string]*mqttRelease, len(ap.channel)+len(ap.candidates))
	for p, r := range ap.channel {
		out[p] = r
	}
	for p, r := range ap.candidates {
		if r.m.Sequence == ro.Sequence {
			out[p] = r
		}
	}
	return out
}

// logRollout logs, once per change, the app's rollout as this device
// sees it.
func (t *mqttTransport) logRollout(ap *mqttApp) {
	ro := ap.rollout
	msg := ""
	if ro != nil {
		role := "not a member"
		if t.member(ro) {
			role = "a member"
		}
		msg = fmt.Sprintf("%s: rollout %s of %s (sequence %d) is %s; this device is %s", ap.cfg.Name, ro.ID, ro.Version, ro.Sequence, ro.State, role)
	}
	if msg != ap.rolloutLog && msg != "" {
		t.logf("mqtt: %s", msg)
	}
	ap.rolloutLog = msg
}

// rolloutReport is the device's phase in the app's rollout, nil when it
// is not a member (SPEC.md §8.8).
func (t *mqttTransport) rolloutReport(a *Agent, ap *mqttApp, st AppStatus) *protocol.RolloutReport {
	ro := ap.rollout
	if a == nil || !t.member(ro) {
		return nil
	}
	rep := &protocol.RolloutReport{ID: ro.ID}
	set := func(phase, why string) *protocol.RolloutReport {
		rep.Phase, rep.Error = phase, why // Marshal cleans and clips it
		return rep
	}
	if st.Sequence >= ro.Sequence && st.State == StateCommitted {
		return set(protocol.PhaseDone, "")
	}
	if why := t.rolloutFailure(a, ap, ro); why != "" {
		return set(protocol.PhaseFailed, why)
	}
	if ro.State == protocol.RolloutAborted {
		return nil // over for this device: nothing will come of it
	}
	if d := ap.desired; d != nil {
		return set(protocol.PhaseSkipped, fmt.Sprintf("an assignment wins: %s %s (sequence %d) is assigned to this device on %s", d.m.App, d.m.Version, d.m.Sequence, d.topic))
	}
	if floor, err := a.mqttFloor(ap.cfg.Name); err == nil && floor >= ro.Sequence && st.Sequence < ro.Sequence {
		return set(protocol.PhaseSkipped, fmt.Sprintf("this device's anti-rollback floor for %s is sequence %d, at or above the candidate's %d: it cannot install it", ap.cfg.Name, floor, ro.Sequence))
	}
	if why := t.noCandidate(a, ap); why != "" && ro.State != protocol.RolloutDone && ro.State != protocol.RolloutAborted {
		return set(protocol.PhaseSkipped, why)
	}
	if dl := ap.dl; dl != nil && dl.rel.m.Sequence == ro.Sequence && dl.complete && !ap.installing && !ap.waitOpens.IsZero() {
		return set(protocol.PhaseWaiting, "")
	}
	return set(protocol.PhasePending, "")
}

// rolloutFailure says why this device failed ro's candidate, or "": it
// refused it (this process), or the state database shows that the
// candidate's sequence was swapped in and then rolled back (the
// "rolled-back" history event), or that it failed its trial with nothing
// to go back to. Both survive a restart of the agent.
func (t *mqttTransport) rolloutFailure(a *Agent, ap *mqttApp, ro *protocol.Rollout) string {
	for _, c := range ap.candidates {
		if c.m.Sequence != ro.Sequence {
			continue
		}
		if why, ok := ap.failed[c.id]; ok {
			return why
		}
	}
	r, err := a.load(ap.cfg.Name)
	if err != nil {
		return ""
	}
	if r.Sequence >= ro.Sequence {
		if r.State == StateFailed && r.Sequence == ro.Sequence {
			return withVersion(ap.cfg.Name, ro.Version, r.LastError)
		}
		return ""
	}
	if max(r.Floor, r.Sequence) < ro.Sequence {
		return "" // never swapped in
	}
	for i := len(r.History) - 1; i >= 0; i-- {
		ev := r.History[i]
		if ev.Kind != "rolled-back" {
			continue
		}
		if why, ok := strings.CutPrefix(ev.Detail, "from "+ro.Version+": "); ok {
			return withVersion(ap.cfg.Name, ro.Version, why)
		}
	}
	return ""
}

// withVersion names the release in a trial's reason ("hello failed its
// health check …" → "hello 1.4.0 failed its health check …").
func withVersion(app, version, why string) string {
	switch {
	case strings.HasPrefix(why, app+" "+version):
		return why
	case strings.HasPrefix(why, app+" "):
		return app + " " + version + why[len(app):]
	case strings.HasPrefix(why, version+" "):
		return app + " " + why
	}
	return fmt.Sprintf("%s %s rolled back: %s", app, version, why)
}

// noCandidate says why no candidate of the app's rollout would run on
// this device ("" when one would, or when the rollout has published none
// yet).
func (t *mqttTransport) noCandidate(a *Agent, ap *mqttApp) string {
	ro := ap.rollout
	var offered []string
	for p, r := range ap.candidates {
		if r.m.Sequence == ro.Sequence {
			offered = append(offered, p)
		}
	}
	if len(offered) == 0 {
		return ""
	}
	sort.Strings(offered)
	rel, profile, err := t.pick(a, t.overlay(ap))
	switch {
	case rel != nil && rel.candidate:
		return ""
	case err != nil:
		return fmt.Sprintf("no candidate runs on this CPU (the rollout offers %s): %v", strings.Join(offered, ", "), err)
	case t.cfg.Profile != "":
		return fmt.Sprintf("the rollout offers no candidate for profile %s (this device's config); it offers %s", t.cfg.Profile, strings.Join(offered, ", "))
	case rel != nil:
		return fmt.Sprintf("the rollout offers %s; this device takes the more specific profile %s from the channel", strings.Join(offered, ", "), profile)
	}
	return fmt.Sprintf("no candidate runs on this device (the rollout offers %s)", strings.Join(offered, ", "))
}
