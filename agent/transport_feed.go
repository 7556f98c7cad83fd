package agent

// The release feed: which release a device should have. Sync rounds
// (subscribe, marker, complete view), the channel/desired/rollout view,
// and choose/evaluate, which start, continue or abandon a download.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// subscribeAll starts a sync round: it subscribes (again) to the release
// and desired topics and to the device's sync topic, and once the broker
// acknowledges, sends the round's marker there. The releases delivered
// before the marker are the complete retained set: the view is replaced
// by them when the marker arrives (syncDone), and nothing is decided on a
// partial view before that (SPEC.md §8.1).
func (t *mqttTransport) subscribeAll() {
	subs := map[string]byte{}
	var filters []string
	for name := range t.apps {
		if f, err := protocol.ReleaseFilter(t.cfg.Broker.Channel, name); err == nil {
			subs[f] = 0
			filters = append(filters, f)
		}
		// The app's rollout: control message and candidates (§8.8).
		if fs, err := protocol.RolloutFilters(t.cfg.Broker.Channel, name); err == nil {
			for _, f := range fs {
				subs[f] = 0
				filters = append(filters, f)
			}
		}
	}
	// The deltas from each app's installed executable (§8.10).
	a := t.agent()
	for _, ap := range t.apps {
		filters = append(filters, t.deltaSubscriptions(a, ap, subs)...)
	}
	desired := protocol.TopicPrefix + "device/" + t.cfg.DeviceID + "/desired/+"
	subs[desired] = 0
	filters = append(filters, desired)
	subs[t.syncTopic] = 0
	subs[t.logsRequestTopic] = 0 // remote logs (§8.11)
	filters = append(filters, t.logsRequestTopic)
	if t.keySetWanted() { // transport_keyset.go
		subs[protocol.KeySetTopic] = 0
		filters = append(filters, protocol.KeySetTopic)
	}
	nonce := randomHex(8)
	t.syncNonce, t.syncStart = nonce, time.Now()
	for _, ap := range t.apps {
		ap.pending, ap.pendingDesired = map[string]*mqttRelease{}, nil
		ap.pendingRollout, ap.pendingCandidates = nil, map[string]*mqttRelease{}
	}
	// Unsubscribe first: a broker need not send the retained messages
	// again for a subscription it already has (a resumed session).
	t.client.Unsubscribe(filters...)
	tok := t.client.SubscribeMultiple(subs, t.onMessage)
	go func() {
		if !tok.WaitTimeout(mqttSyncTimeout) || tok.Error() != nil {
			t.subscribeFailed(tok.Error())
			return
		}
		t.client.Publish(t.syncTopic, 0, false, []byte(nonce))
	}()
	for _, ap := range t.apps {
		if ap.dl != nil {
			t.resubscribeChunks(ap.dl)
		}
	}
}

// subscribeFailed notes a failed subscription: logged once per
// connection, subscribed again by housekeeping while connected.
func (t *mqttTransport) subscribeFailed(err error) {
	if err == nil {
		err = errors.New("no SUBACK from the broker")
	}
	if !t.subLogged.Swap(true) {
		t.logf("mqtt: subscribe: %v; subscribing again while connected", err)
	}
	t.subFailed.Store(true)
}

// syncDone ends a sync round. complete: the marker arrived, so the
// round's releases are the whole retained set and replace the view
// (releases retired while the device was away disappear). Otherwise (the
// marker never came) they are merged into it.
func (t *mqttTransport) syncDone(ctx context.Context, complete bool) {
	t.syncNonce = ""
	for _, ap := range t.apps {
		if ap.pending == nil {
			continue
		}
		if complete {
			ap.channel, ap.desired = ap.pending, ap.pendingDesired
			ap.rollout, ap.candidates = ap.pendingRollout, ap.pendingCandidates
			ap.deltas = ap.pendingDeltas
		} else {
			if ap.deltas == nil {
				ap.deltas = map[string]*mqttRelease{}
			}
			for k, v := range ap.pendingDeltas {
				ap.deltas[k] = v
			}
			for k, v := range ap.pending {
				ap.channel[k] = v
			}
			if ap.pendingDesired != nil {
				ap.desired = ap.pendingDesired
			}
			for k, v := range ap.pendingCandidates {
				ap.candidates[k] = v
			}
			if ap.pendingRollout != nil {
				ap.rollout = ap.pendingRollout
			}
		}
		for _, rel := range ap.channel {
			t.redelivered(ap, rel)
		}
		for _, rel := range ap.candidates {
			t.redelivered(ap, rel)
		}
		t.logRollout(ap)
		if ap.desired != nil {
			t.redelivered(ap, ap.desired)
		}
		ap.pending, ap.pendingDesired = nil, nil
		ap.pendingRollout, ap.pendingCandidates = nil, nil
		ap.pendingDeltas = nil
		t.evaluate(ctx, ap)
	}
}

// refreshDelay is the wait before the n-th re-read of the release topics
// after a connect.
func refreshDelay(n int) time.Duration {
	if n < len(mqttRefresh) {
		return mqttRefresh[n]
	}
	jitter := time.Duration(mrand.Int64N(int64(mqttRefreshEvery)/5+1)) - mqttRefreshEvery/10
	return mqttRefreshEvery + jitter
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// parseRelease parses and verifies an envelope; nil for an empty message
// or (logged, reported) a bad one.
func (t *mqttTransport) parseRelease(ap *mqttApp, topic string, payload []byte) *mqttRelease {
	if len(payload) == 0 {
		return nil
	}
	env, err := protocol.ParseEnvelope(payload)
	if err == nil {
		a := t.agent()
		if a == nil {
			t.missed = true
			return nil
		}
		var m *protocol.Manifest
		if m, err = env.Open(a.keys); err == nil {
			if m.App != ap.cfg.Name {
				err = fmt.Errorf("the release on %s is for app %q: %w", topic, m.App, protocol.ErrMalformed)
			} else if err = t.checkTargeting(a, topic, env); err == nil { // transport_targeting.go
				sum := sha256.Sum256(env.Manifest)
				return &mqttRelease{topic: topic, env: env, m: m, id: hex.EncodeToString(sum[:])}
			}
		}
	}
	t.stats.Dropped.Add(1)
	t.logf("mqtt: dropped the release on %s: %v", topic, err)
	ap.lastErr = fmt.Sprintf("release on %s ignored: %v", topic, err)
	return nil
}

// choose picks the release for ap: the device's desired one, else from
// the channel's releases (with a running rollout's candidates overlaid
// when the device is a member: releases) the one for the configured
// profile, else the most specific published profile this CPU runs.
func (t *mqttTransport) choose(a *Agent, ap *mqttApp) (*mqttRelease, error) {
	if ap.desired != nil {
		return ap.desired, nil
	}
	rel, profile, err := t.pick(a, t.releases(ap))
	if profile != "" {
		ap.profile = profile
	}
	return rel, err
}

// pick chooses from the releases ch (profile → release): the configured
// profile's, else the most specific profile this CPU runs. It returns
// the profile picked.
func (t *mqttTransport) pick(a *Agent, ch map[string]*mqttRelease) (*mqttRelease, string, error) {
	if len(ch) == 0 {
		return nil, "", nil
	}
	if t.cfg.Profile != "" {
		return ch[t.cfg.Profile], t.cfg.Profile, nil
	}
	names := make([]string, 0, len(ch))
	for n := range ch {
		names = append(names, n)
	}
	sort.Strings(names)
	best, err := hardware.BestProfile(a.CPU(), names, hardware.DefaultSet())
	if err == nil {
		return ch[best], best, nil
	}
	// Custom profile names: decide from the signed targets themselves.
	for _, n := range names {
		if a.CPU().CanRun(targetOf(ch[n].m.Target)) == nil {
			return ch[n], n, nil
		}
	}
	return nil, "", err
}

// behindNote says why this device does not work towards the newest
// release published on the channel for ap (the highest sequence across
// profiles) although it takes an older one (rel): the newest is published
// only for profiles this CPU cannot run, or only for a less specific one
// than the profile the device picks, or not for the configured profile.
// "" when the device is not behind (or follows a desired release, which
// the operator chose for it).
func (t *mqttTransport) behindNote(a *Agent, ap *mqttApp, rel *mqttRelease) string {
	ch := t.releases(ap)
	if ap.desired != nil || len(ch) == 0 {
		return ""
	}
	if rel == nil && t.cfg.Profile == "" {
		return "" // nothing runs here at all: choose says why
	}
	var newest, taken uint64
	for _, r := range ch {
		newest = max(newest, r.m.Sequence)
	}
	if rel != nil {
		taken = rel.m.Sequence
	}
	if taken >= newest {
		return ""
	}
	if floor, err := a.mqttFloor(ap.cfg.Name); err != nil || floor >= newest {
		return "" // already has it (a sideload, say), or cannot tell
	}
	var names []string
	for n, r := range ch {
		if r.m.Sequence == newest {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	n0 := ch[names[0]].m
	head := fmt.Sprintf("%s %s (sequence %d) is published only for %s", n0.App, n0.Version, newest, strings.Join(names, ", "))
	if t.cfg.Profile != "" {
		keeps := "nothing is published for it"
		if rel != nil {
			keeps = fmt.Sprintf("its newest is %s (sequence %d)", rel.m.Version, rel.m.Sequence)
		}
		return fmt.Sprintf("%s, not for %s, the profile in this device's config (%s); publish a %s build, or change profile: in the agent config", head, t.cfg.Profile, keeps, t.cfg.Profile)
	}
	keeps := fmt.Sprintf("%s (sequence %d, %s)", rel.m.Version, rel.m.Sequence, ap.profile)
	// Why this CPU cannot run any of them: the reason for the build of
	// this CPU's architecture says the most.
	var why error
	for _, n := range names {
		tg := targetOf(ch[n].m.Target)
		err := a.CPU().CanRun(tg)
		if err == nil {
			return fmt.Sprintf("%s, which this CPU runs, but the most specific profile published for it is %s, whose newest is %s; publish %s %s for %s too, or retire the older %s release", head, ap.profile, keeps, n0.App, n0.Version, ap.profile, ap.profile)
		}
		if why == nil || tg.GOARCH == a.CPU().GOARCH {
			why = err
		}
	}
	return fmt.Sprintf("%s, so the newest this device can run is %s: %v", head, keeps, why)
}

// setBehind records ap's behind note (shown in its status), logging a
// change.
func (t *mqttTransport) setBehind(ap *mqttApp, note string) {
	if note != ap.behind && note != "" {
		t.logf("mqtt: %s", note)
	}
	ap.behind = note
}

// evaluate decides whether ap needs a download, and starts or continues it.
func (t *mqttTransport) evaluate(ctx context.Context, ap *mqttApp) {
	a := t.agent()
	if a == nil {
		return
	}
	rel, err := t.choose(a, ap)
	note := t.behindNote(a, ap, rel)
	if err != nil {
		// Nothing on the channel runs on this CPU: the device keeps what
		// it runs. Information for the operator, never a failure.
		note = err.Error()
	}
	t.setBehind(ap, note)
	if err != nil {
		return
	}
	if rel == nil {
		if ap.dl != nil && ap.dl.rel.candidate && !ap.installing {
			// The rollout was paused, halted or aborted, or the device is
			// no longer a member: no new start (SPEC.md §8.8).
			t.logf("mqtt: %s: abandoning the download of %s: its rollout no longer offers it to this device", ap.cfg.Name, ap.dl.rel.m.Version)
			t.abandon(ap)
		}
		return
	}
	m := rel.m
	sha := m.Payload.SHA256
	if _, bad := ap.failed[rel.id]; bad {
		return // refused for good; the reason stays in the status
	}
	if h := ap.hold; h != nil {
		if h.sha != sha {
			ap.hold = nil // another release replaced the held one
		} else if time.Now().Before(h.until) {
			return
		}
	}
	floor, err := a.mqttFloor(ap.cfg.Name)
	if err != nil {
		ap.lastErr = err.Error()
		return
	}
	if m.Sequence <= floor {
		if ap.dl != nil && !ap.installing {
			if ap.dl.rel.candidate && !rel.candidate {
				t.logf("mqtt: %s: abandoning the download of %s: its rollout no longer offers it to this device", ap.cfg.Name, ap.dl.rel.m.Version)
			}
			t.abandon(ap)
		}
		return
	}
	if ap.dl != nil && ap.dl.forSHA() == sha {
		if ap.dl.full != nil {
			ap.dl.full = rel
		} else {
			ap.dl.rel = rel
		}
		t.fill(ctx, ap)
		return
	}
	if ap.installing {
		return // decide again when the running install ends
	}
	if ap.dl != nil {
		t.logf("mqtt: %s: abandoning the download of %s for %s", ap.cfg.Name, ap.dl.rel.m.Version, m.Version)
		t.abandon(ap)
	}
	// Refuse what can never install before fetching a byte.
	if err := m.CheckExpiry(a.trustedNow()); err != nil {
		t.refuse(a, ap, rel, err)
		return
	}
	if err := a.CPU().CanRun(targetOf(m.Target)); err != nil {
		t.refuse(a, ap, rel, fmt.Errorf("%s %s: %w", m.App, m.Version, err))
		return
	}
	if err := a.checkDecoderMemory(m); err != nil {
		t.refuse(a, ap, rel, err)
		return
	}
	if t.syncNonce == "" && t.connected && t.baseChanged(a, ap) {
		// The installed executable changed since the delta filter was
		// subscribed (an install, a rollback): read again, then decide.
		t.subscribeAll()
		return
	}
	full := rel
	if d := t.deltaFor(a, ap, rel); d != nil {
		rel = d
	} else if ap.deltaGiveUp[m.Payload.SHA256] == "" {
		ap.deltaNote = ""
	}
	dl, err := t.openDownload(a, ap, rel)
	if err != nil {
		if !errors.Is(err, ErrNoSpace) {
			err = fmt.Errorf("cannot prepare the download: %w", err)
		}
		t.transient(ap, m, err, false)
		return
	}
	how := ""
	if rel != full {
		dl.full = full
		how = describeDelta(rel.m, m)
	}
	ap.dl = dl
	ap.mirrorNote = ""
	if ap.hold == nil {
		ap.lastErr = ""
	}
	t.logf("mqtt: %s: fetching %s (sequence %d, %d chunks, %d already here)%s", ap.cfg.Name, m.Version, m.Sequence, len(rel.m.Payload.Chunks), dl.n, how)
	t.fill(ctx, ap)
}

// refuse refuses a release before its download: reported, recorded in
// the app's history, and never fetched again by this process.
func (t *mqttTransport) refuse(a *Agent, ap *mqttApp, rel *mqttRelease, err error) {
	t.fatal(ap, rel, err)
	a.recordRefusal(ap.cfg, rel.m, err)
}

// fatal drops a release for good (agent.Fatal: bad signature, wrong CPU,
// older sequence, failed probe…): retrying the same bytes gives the same
// answer. Its download is removed; a different release (another payload)
// is considered as usual. The refusal is remembered by the signed
// manifest's hash: a renewed manifest (new expiry, probe or target) for the
// same payload is tried. A restart of the agent tries once more.
func (t *mqttTransport) fatal(ap *mqttApp, rel *mqttRelease, err error) {
	m := rel.m
	ap.lastErr = fmt.Sprintf("%s %s refused: %v", m.App, m.Version, err)
	ap.stallErr = false
	ap.failed[rel.id] = ap.lastErr
	if ap.hold != nil && ap.hold.sha == m.Payload.SHA256 {
		ap.hold = nil
	}
	if ap.dl != nil && ap.dl.forSHA() == m.Payload.SHA256 {
		t.abandon(ap)
	}
	t.logf("mqtt: %s", ap.lastErr)
}

// redelivered: the release message for rel arrived again (published
// again, or re-sent after a reconnect). A release held for a corrupt chunk
// is retried at once: the broker's copy may have been fixed.
func (t *mqttTransport) redelivered(ap *mqttApp, rel *mqttRelease) {
	if h := ap.hold; h != nil && h.chunk && h.sha == rel.m.Payload.SHA256 && time.Now().Before(h.until) {
		t.logf("mqtt: %s %s was delivered again; asking for its chunks again", rel.m.App, rel.m.Version)
		h.until = time.Time{}
	}
}
