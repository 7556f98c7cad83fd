package agent

// Status reporting: the retained device status and presence messages.

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// presenceBytes builds the device's presence message (online, or offline
// for the will and a clean stop).
func (t *mqttTransport) presenceBytes(online bool) []byte {
	p := &protocol.Presence{Schema: protocol.MQTTSchemaVersion, Device: t.cfg.DeviceID, Online: online, Time: time.Now().UTC()}
	b, err := p.Marshal()
	if err != nil {
		t.logf("mqtt: presence: %v", err)
	}
	return b
}

// statusBytes builds the device status message. Online is always true:
// a device writes its status only while connected; liveness is the
// presence topic.
func (t *mqttTransport) statusBytes() []byte {
	s := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: t.cfg.DeviceID, Profile: t.cfg.Profile,
		AgentVersion: clip(t.d.opts.Version, 200), Time: time.Now().UTC(), Online: true,
		Channel: t.cfg.Broker.Channel, Labels: t.cfg.Labels, Broker: t.statusBroker()}
	a := t.agent()
	if a != nil {
		s.CPU = clip(a.CPU().String(), 200)
		t.trustStatus(a, s) // transport_keyset.go
	}
	var sts []AppStatus
	if a != nil {
		sts, _ = a.Status()
	}
	for _, st := range sts {
		ap := t.apps[st.App]
		if ap == nil {
			continue
		}
		if s.Profile == "" && ap.profile != "" {
			s.Profile = ap.profile
		}
		r := protocol.AppReport{App: st.App, Version: st.Version, Sequence: st.Sequence, State: st.State, LastError: st.LastError}
		if ap.lastErr != "" {
			r.LastError = ap.lastErr
		}
		// Why the device stays behind the channel's newest release:
		// information, never a failure.
		r.Note = ap.behind
		if ap.mirrorNote != "" {
			r.Note = strings.TrimPrefix(r.Note+"; "+ap.mirrorNote, "; ")
		}
		if ap.dl != nil {
			r.Target = ap.dl.rel.m.Version
			r.Progress = &protocol.ProgressReport{Step: "download", Done: ap.dl.doneBytes(), Total: ap.dl.rel.m.Payload.Size}
			if ap.installing && st.Progress != nil {
				r.Progress = &protocol.ProgressReport{Step: st.Progress.Step, Done: st.Progress.Done, Total: st.Progress.Total}
			}
			if !ap.installing && ap.dl.complete && !ap.waitOpens.IsZero() {
				opens := ap.waitOpens.UTC()
				r.WindowOpens = &opens
			}
		}
		r.Rollout = t.rolloutReport(a, ap, st)
		r.Delta = ap.deltaNote
		if !protocol.ValidApp(r.App) {
			continue
		}
		r.Version = clip(r.Version, 200)
		s.Apps = append(s.Apps, r)
	}
	b, err := s.Marshal()
	if err != nil {
		t.logf("mqtt: status: %v", err)
		s.Apps = nil
		b, _ = s.Marshal()
	}
	return b
}

// publishStatus publishes the retained status when it changed (progress is
// thereby throttled to the housekeeping tick), and at least every
// mqttHeartbeat, so that its time tells the last contact.
func (t *mqttTransport) publishStatus() {
	if !t.connected {
		return
	}
	b := t.statusBytes()
	var cmp protocol.DeviceStatus
	json.Unmarshal(b, &cmp)
	cmp.Time = time.Time{}
	key, _ := json.Marshal(cmp)
	if string(key) == t.lastStatus && time.Since(t.lastPublished) < mqttHeartbeat {
		return
	}
	t.lastStatus, t.lastPublished = string(key), time.Now()
	t.confirm("status", t.client.Publish(t.statusTopic, 1, true, b))
}
