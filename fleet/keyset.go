package fleet

// Key sets on the broker (protocol/SPEC.md §8.12): the operator publishes
// the chain message retained on edgefleet/v1/keyset; `edgefleet status`
// compares each device's reported key set version with it.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// PublishKeySet checks a key set chain message (strict parse; and, when
// roots are given, that it verifies from them at now) and publishes it
// retained on protocol.KeySetTopic with QoS 1, waiting for the broker's
// acknowledgement. It returns the newest version in the chain.
func PublishKeySet(ctx context.Context, c paho.Client, msg []byte, roots []protocol.PublicKey, threshold int, now time.Time) (uint64, error) {
	ch, docs, err := protocol.ParseKeySetChain(msg)
	if err != nil {
		return 0, fmt.Errorf("key set: %w", err)
	}
	last := docs[len(docs)-1]
	if len(roots) > 0 {
		if _, err := (protocol.TrustState{Roots: roots, Threshold: threshold}).Advance(ch, docs, now); err != nil {
			return 0, fmt.Errorf("the key set does not verify from the given root keys, devices would refuse it: %w", err)
		}
	} else if !now.Before(last.Expires) {
		return 0, fmt.Errorf("key set version %d expired at %s; devices would refuse it: sign a fresh one: %w", last.Version, last.Expires.Format(time.RFC3339), protocol.ErrExpired)
	}
	if err := wait(ctx, c.Publish(protocol.KeySetTopic, 1, true, msg), time.Minute); err != nil {
		return 0, fmt.Errorf("publish the key set: %w", err)
	}
	return last.Version, nil
}

// ReadKeySetVersion returns the newest key set version retained on the
// broker (0 when there is none or it cannot be parsed).
func ReadKeySetVersion(snap map[string][]byte) uint64 {
	b := snap[protocol.KeySetTopic]
	if len(b) == 0 {
		return 0
	}
	_, docs, err := protocol.ParseKeySetChain(b)
	if err != nil {
		return 0
	}
	return docs[len(docs)-1].Version
}

// ReadKeySet returns the newest key set retained on the broker (nil when
// there is none or it cannot be parsed). It is not verified: use it to
// warn an operator, never to decide trust.
func ReadKeySet(snap map[string][]byte) *protocol.KeySet {
	b := snap[protocol.KeySetTopic]
	if len(b) == 0 {
		return nil
	}
	_, docs, err := protocol.ParseKeySetChain(b)
	if err != nil {
		return nil
	}
	return docs[len(docs)-1]
}

// CheckTargetingFor says, before anything is published, whether devices
// holding key set ks would accept releases on channel targeted with t
// (nil: untargeted): with targeting keys in ks, t must be signed by one
// of them whose channels include channel. channel "" is a release for
// devices (an assignment), which a key's channels do not limit. Nil when
// they would.
func CheckTargetingFor(ks *protocol.KeySet, t *TargetingOptions, channel string) error {
	if ks == nil || len(ks.Targeting) == 0 {
		return nil
	}
	var ids []string
	for _, k := range ks.Targeting {
		pk, err := protocol.ParsePublicKeyLine(k.Key)
		if err != nil {
			continue
		}
		ids = append(ids, protocol.KeyID(pk.ID()))
		if t == nil {
			continue
		}
		pub, ok := t.Key.Public().(protocol.PublicKey)
		if !ok || pub.ID() != pk.ID() {
			continue
		}
		if channel != "" && len(k.Channels) > 0 && !slices.Contains(k.Channels, channel) {
			return fmt.Errorf("targeting key %s may target channels %s only, not %s (key set version %d on the broker): devices would refuse the release; use a targeting key for %s",
				protocol.KeyID(pk.ID()), strings.Join(k.Channels, ", "), channel, ks.Version, channel)
		}
		return nil
	}
	if t == nil {
		return fmt.Errorf("key set version %d on the broker names targeting keys (%s): devices refuse a release without a targeting (a channel's release, an assignment, a rollout's candidates and their promotion alike); give --targeting-key with one of those keys (protocol/SPEC.md §8.13)",
			ks.Version, strings.Join(ids, ", "))
	}
	pub, _ := t.Key.Public().(protocol.PublicKey)
	return fmt.Errorf("the --targeting-key (key %s) is not a targeting key of key set version %d on the broker (%s): devices would refuse the release; use one of those, or publish a key set that names it",
		protocol.KeyID(pub.ID()), ks.Version, strings.Join(ids, ", "))
}

// KeySetBehind lists the devices that report a key set older than version
// (devices that report none are listed too when version > 0), sorted.
func (v *FleetView) KeySetBehind(version uint64) []protocol.DeviceStatus {
	var out []protocol.DeviceStatus
	if version == 0 {
		return nil
	}
	for _, d := range v.Devices() {
		if d.KeySet < version {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// WriteKeySetReport writes one line per device behind the operator's key
// set version, and each device's key set refusal or clock behind its time
// floor; nothing when all is well.
func (v *FleetView) WriteKeySetReport(w io.Writer, version uint64) {
	for _, d := range v.KeySetBehind(version) {
		held := fmt.Sprintf("key set version %d", d.KeySet)
		if d.KeySet == 0 {
			held = "no key set"
		}
		fmt.Fprintf(w, "device %s holds %s, older than the operator's version %d (offline, no root_keys, or it refused it)\n", d.Device, held, version)
	}
	for _, d := range v.Devices() {
		if d.KeySetError != "" {
			fmt.Fprintf(w, "device %s: %s\n", d.Device, oneLine(d.KeySetError, 300))
		}
		if d.ClockBehind != nil {
			fmt.Fprintf(w, "device %s: its clock is behind the newest signed time it verified (%s); it uses that time for expiry: set its clock (NTP)\n", d.Device, d.ClockBehind.UTC().Format(time.RFC3339))
		}
	}
}
