package agent

// Deltas over MQTT (SPEC.md §8.10). In every sync round a device also
// subscribes, per app, to the deltas whose base is its installed
// executable (edgefleet/v1/delta/<app>/+/<installed sha256>), so the
// retained deltas it can use arrive with the releases and follow the same
// complete-view rule. When it starts a download it takes the delta for
// the chosen release if one verified and stands for that release
// (protocol.CheckDeltaFor); the delta's chunks then travel like any
// payload's. Any failure of the delta falls back to the full release,
// once per release in this process, and the status says so.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// baseCache remembers the sha256 of an executable not installed by
// edgefleet, by its identity and change time, so it is hashed once.
type baseCache struct {
	dev, ino uint64
	size     int64
	mtime    int64
	sum      string
}

// installedBase is the sha256 of ap's installed executable: the state
// database's when edgefleet installed it (a binary modified by hand then
// fails the delta's base check, and the status says so), else the file's
// own; "" when there is none.
func (t *mqttTransport) installedBase(a *Agent, ap *mqttApp) string {
	if r, err := a.load(ap.cfg.Name); err == nil && r.SHA256 != "" && r.Version != "" {
		switch r.State {
		case StateCommitted, StateTrial:
			return r.SHA256
		}
	}
	fi, err := os.Stat(ap.cfg.Path)
	if err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	dev, ino := statIdentity(fi)
	c := ap.baseFile
	if c != nil && c.dev == dev && c.ino == ino && c.size == fi.Size() && c.mtime == fi.ModTime().UnixNano() {
		return c.sum
	}
	sum, err := fileSHA256(ap.cfg.Path)
	if err != nil || sum == "" {
		return ""
	}
	ap.baseFile = &baseCache{dev: dev, ino: ino, size: fi.Size(), mtime: fi.ModTime().UnixNano(), sum: sum}
	return sum
}

// deltaSubscriptions adds ap's delta filter to a sync round's subscriptions
// and returns the filter to unsubscribe first (the old base's too).
func (t *mqttTransport) deltaSubscriptions(a *Agent, ap *mqttApp, subs map[string]byte) []string {
	var unsub []string
	if ap.deltaFilter != "" {
		unsub = append(unsub, ap.deltaFilter)
	}
	ap.base, ap.deltaFilter = "", ""
	ap.pendingDeltas = map[string]*mqttRelease{}
	if a == nil {
		return unsub
	}
	base := t.installedBase(a, ap)
	if base == "" {
		return unsub
	}
	f, err := protocol.DeltasFromFilter(ap.cfg.Name, base)
	if err != nil {
		return unsub
	}
	ap.base, ap.deltaFilter = base, f
	subs[f] = 0
	return append(unsub, f)
}

// baseChanged: the installed executable is no longer the base ap's delta
// subscription was made for (an install, a rollback): a new sync round
// is due before deciding.
func (t *mqttTransport) baseChanged(a *Agent, ap *mqttApp) bool {
	return t.installedBase(a, ap) != ap.base
}

// deltaMessage handles a retained delta envelope.
func (t *mqttTransport) deltaMessage(ctx context.Context, tp protocol.Topic, topic string, payload []byte) {
	ap := t.apps[tp.App]
	if ap == nil || tp.Base != ap.base || ap.base == "" {
		return // not from this device's executable (a late delivery)
	}
	view := ap.deltas
	if ap.pendingDeltas != nil {
		view = ap.pendingDeltas
	}
	if view == nil {
		view = map[string]*mqttRelease{}
		ap.deltas = view
	}
	if len(payload) == 0 {
		delete(view, tp.SHA256)
		return
	}
	rel := t.parseRelease(ap, topic, payload)
	if rel == nil {
		return
	}
	m := rel.m
	if !m.IsDelta() || m.Delta.BaseSHA256 != tp.Base || m.Executable.SHA256 != tp.SHA256 {
		t.stats.Dropped.Add(1)
		t.logf("mqtt: dropped the delta on %s: its signed manifest is not a delta from %s to %s", topic, short(tp.Base), short(tp.SHA256))
		return
	}
	view[tp.SHA256] = rel
	if ap.pendingDeltas == nil {
		t.evaluate(ctx, ap)
	}
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// deltaFor returns the delta release to download instead of rel, or nil.
func (t *mqttTransport) deltaFor(a *Agent, ap *mqttApp, rel *mqttRelease) *mqttRelease {
	m := rel.m
	if ap.deltaGiveUp[m.Payload.SHA256] != "" || ap.base == "" {
		return nil
	}
	d := ap.deltas[m.Executable.SHA256]
	if d == nil {
		return nil
	}
	why := ""
	switch err := protocol.CheckDeltaFor(d.m, m); {
	case err != nil:
		why = err.Error()
	case d.m.Delta.BaseSHA256 != ap.base:
		why = "the delta's base is not this device's executable"
	case a.checkDeltaMemory(d.m) != nil:
		why = a.checkDeltaMemory(d.m).Error()
	case d.m.Payload.Size >= m.Payload.Size:
		why = "the delta is not smaller than the full release"
	}
	if why != "" {
		t.giveUpDelta(ap, m, why)
		return nil
	}
	return d
}

// giveUpDelta records that the delta for the full release m is not used
// (for the rest of this process) and why.
func (t *mqttTransport) giveUpDelta(ap *mqttApp, m *protocol.Manifest, why string) {
	if ap.deltaGiveUp == nil {
		ap.deltaGiveUp = map[string]string{}
	}
	why = strings.TrimPrefix(why, ErrDelta.Error()+": ")
	ap.deltaGiveUp[m.Payload.SHA256] = why
	ap.deltaNote = clip("fallback: "+why, protocol.MaxDeltaNote)
	t.stats.DeltaFallbacks.Add(1)
	t.logf("mqtt: %s %s: not using the delta (%s); fetching the full release", m.App, m.Version, why)
}

// deltaFallback: the delta download or its install failed; fetch the full
// release instead, at once.
func (t *mqttTransport) deltaFallback(ctx context.Context, ap *mqttApp, err error) {
	full := ap.dl.full
	t.giveUpDelta(ap, full.m, err.Error())
	t.abandon(ap)
	t.evaluate(ctx, ap)
}

// forSHA is the payload sha256 of the full release a download stands for.
func (dl *mqttDownload) forSHA() string {
	if dl.full != nil {
		return dl.full.m.Payload.SHA256
	}
	return dl.rel.m.Payload.SHA256
}

// describeDelta is the log note of a delta download.
func describeDelta(d, full *protocol.Manifest) string {
	return fmt.Sprintf(" as a delta from %s (%s instead of %s)", orUnknownVersion(d.Delta.BaseVersion), hardware.Size(d.Payload.Size), hardware.Size(full.Payload.Size))
}

func orUnknownVersion(v string) string {
	if v == "" {
		return "the installed build"
	}
	return v
}

// deltaInstalled handles the end of a delta download's install: true when
// it was handled (success noted, or fallen back).
func (t *mqttTransport) deltaInstalled(ctx context.Context, ap *mqttApp, err error) bool {
	if ap.dl == nil || ap.dl.full == nil {
		if err == nil && ap.dl != nil && ap.deltaGiveUp[ap.dl.forSHA()] == "" {
			ap.deltaNote = "" // a full release, no delta offered
		}
		return false
	}
	switch {
	case err == nil:
		ap.deltaNote = protocol.DeltaUsed
		t.stats.DeltasUsed.Add(1)
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, ErrBusy), errors.Is(err, ErrLocked):
		return false
	}
	t.deltaFallback(ctx, ap, err)
	t.publishStatus()
	return true
}

// statIdentity is the device and inode of a file (0, 0 when unknown).
func statIdentity(fi os.FileInfo) (uint64, uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), uint64(st.Ino)
	}
	return 0, 0
}
