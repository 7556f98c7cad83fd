package agent

// The key set over MQTT (protocol/SPEC.md §8.12): a device configured with
// root_keys subscribes to the retained edgefleet/v1/keyset topic. A newer
// key set it verifies is stored (keyset.go) and the release topics are read
// again, so releases refused for an unknown key are judged afresh; one it
// refuses is logged once and reported in the status (keyset_error).

import (
	"crypto/sha256"
	"errors"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// keySetFeed is the transport's view of the key set topic.
type keySetFeed struct {
	lastSum [32]byte // the last message judged (a redelivery is skipped)
	err     string   // why the last key set offered was refused ("" none)
	// changed: a key set was accepted another way (sideload through the
	// control socket): read the releases again at the next housekeeping.
	changed atomic.Bool
}

// watchKeySet asks the agent to tell the transport about key sets
// accepted by sideload.
func (t *mqttTransport) watchKeySet() {
	if a := t.agent(); a != nil && a.trust != nil {
		a.trust.setNotify(func() { t.keyset.changed.Store(true) })
	}
}

// keySetWanted: subscribe to the key set topic (only with root_keys).
func (t *mqttTransport) keySetWanted() bool { return len(t.cfg.RootKeys) > 0 }

// keySetMessage judges a key set message. Runs on the transport's loop.
func (t *mqttTransport) keySetMessage(payload []byte) {
	a := t.agent()
	if a == nil || len(payload) == 0 || !t.keySetWanted() {
		return
	}
	sum := sha256.Sum256(payload)
	if sum == t.keyset.lastSum {
		return
	}
	t.keyset.lastSum = sum
	from := a.Trust().KeySet
	v, err := a.AcceptKeySet(payload)
	switch {
	case err == nil:
		t.keyset.err = ""
		t.logf("mqtt: key set version %d accepted (was %d); reading the releases again", v, from)
		t.publishStatus()
		t.subscribeAll()
	case errors.Is(err, protocol.ErrRollback):
		// The retained key set is not newer: nothing to do. (A replay of
		// an older one is refused the same way, silently: the device
		// stays on the newer one it holds.)
		t.keyset.err = ""
	default:
		t.stats.Dropped.Add(1)
		t.keyset.err = "key set on " + protocol.KeySetTopic + " refused: " + err.Error()
		t.logf("mqtt: %s", t.keyset.err)
		t.publishStatus()
	}
}

// trustStatus adds the key set version, its last refusal and a clock
// behind the time floor to the status.
func (t *mqttTransport) trustStatus(a *Agent, s *protocol.DeviceStatus) {
	ti := a.Trust()
	s.KeySet = ti.KeySet
	s.KeySetError = t.keyset.err
	if s.KeySetError == "" {
		s.KeySetError = ti.Error // a bad key set in a sideloaded bundle
	}
	if ti.ClockBehind {
		f := ti.TimeFloor.UTC().Truncate(time.Second)
		s.ClockBehind = &f
	}
}
