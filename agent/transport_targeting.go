package agent

// Signed targeting on the device (protocol/SPEC.md §8.13): when the key set
// the device holds names targeting keys, a release from the broker must
// carry a targeting, signed by one of them, for this exact manifest and for
// the channel it arrived on (or, on the device's desired topic, for this
// device), not expired at trusted time. Otherwise it is dropped and the
// reason reported in the app's last_error, like a bad signature. Sideloaded
// bundles need no targeting: whoever sideloads is on the device.

import (
	"encoding/json"
	"io"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// checkTargeting applies the rule above to a verified envelope received
// on topic.
func (t *mqttTransport) checkTargeting(a *Agent, topic string, env *protocol.Envelope) error {
	ks := a.heldKeySet()
	if ks == nil || len(ks.Targeting) == 0 {
		return nil
	}
	tp, err := protocol.ParseTopic(topic)
	if err != nil {
		return err
	}
	to := protocol.TargetingTo{Channel: tp.Channel}
	if tp.Kind == protocol.KindDesired {
		to = protocol.TargetingTo{Device: tp.Device}
	}
	tg, err := protocol.CheckTargeting(ks, env.Targeting, env.Manifest, to, a.trustedNow())
	if err != nil {
		return err
	}
	if tg != nil {
		a.raiseTimeFloor(tg.Issued)
	}
	return nil
}

// heldKeySet is the key set the device holds (nil: none).
func (a *Agent) heldKeySet() *protocol.KeySet {
	if a.trust == nil {
		return nil
	}
	a.trust.mu.Lock()
	defer a.trust.mu.Unlock()
	return a.trust.st.Held
}

// raiseTimeFloor keeps a newer signed time (a verified targeting's issue
// time) in trust.json. A failure to write is logged: the floor in memory
// still holds until a restart.
func (a *Agent) raiseTimeFloor(ts time.Time) {
	if a.trust == nil {
		return
	}
	t := a.trust
	t.mu.Lock()
	defer t.mu.Unlock()
	if !ts.After(t.floor) {
		return
	}
	t.floor = ts.UTC()
	b, _ := json.MarshalIndent(trustDoc{Schema: trustSchema, KeySet: t.st.Raw, TimeFloor: t.floor}, "", "  ")
	if err := protocol.WriteFileAtomic(a.cfg.TrustPath(), 0o600, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	}); err != nil {
		a.opts.Logf("trust: cannot store the time floor %s in %s: %v", t.floor.Format(time.RFC3339), a.cfg.TrustPath(), err)
	}
}
