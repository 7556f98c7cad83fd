package protocol

// Signed targeting (SPEC.md §8.13), after Uptane's director: a release key
// says "this build is genuine"; a targeting key, delegated by the key set
// and narrower in power, says "this build goes to this channel or device
// until T". A device whose key set names targeting keys installs from the
// broker only what is both genuine and targeted at it.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"aead.dev/minisign"
)

// Targeting limits.
const (
	TargetingSchemaVersion = 1
	// MaxTargetingSize bounds the targeting document.
	MaxTargetingSize = 4 << 10
)

// ErrNotTargeted: a release is genuine but not targeted at this device
// (no targeting, another channel or device, expired, or signed by a key
// the key set does not delegate). Final for that envelope.
var ErrNotTargeted = fmt.Errorf("not targeted at this device")

// Targeting is the signed document (schema 1). Exactly one of Channel and
// Device is set.
type Targeting struct {
	Schema         int       `json:"schema"`
	Type           string    `json:"type"` // "targeting"
	App            string    `json:"app"`
	Version        string    `json:"version"`
	Sequence       uint64    `json:"sequence"`
	ManifestSHA256 string    `json:"manifest_sha256"` // of the exact signed manifest bytes
	Channel        string    `json:"channel,omitempty"`
	Device         string    `json:"device,omitempty"`
	Rollout        string    `json:"rollout,omitempty"` // informational: the rollout id
	Issued         time.Time `json:"issued"`
	Expires        time.Time `json:"expires"`
}

// SignedTargeting is the envelope field: the exact document bytes and one
// minisign signature by a targeting key.
type SignedTargeting struct {
	Doc       []byte `json:"doc"` // base64 on the wire
	Signature string `json:"signature"`
}

// ParseTargeting decodes a targeting document strictly.
func ParseTargeting(b []byte) (*Targeting, error) {
	if len(b) > MaxTargetingSize {
		return nil, fmt.Errorf("targeting is %d bytes, more than %d: %w", len(b), MaxTargetingSize, ErrTooLarge)
	}
	if err := checkSchemaVersion(b, "targeting", TargetingSchemaVersion); err != nil {
		return nil, err
	}
	var t Targeting
	if err := StrictUnmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("targeting: %v: %w", err, ErrMalformed)
	}
	bad := func(f string, a ...any) (*Targeting, error) {
		return nil, fmt.Errorf("targeting: "+f+": %w", append(a, ErrMalformed)...)
	}
	switch {
	case t.Type != "targeting":
		return bad("type %q, want \"targeting\"", clip(t.Type))
	case !ValidApp(t.App):
		return bad("app %q is not valid", clip(t.App))
	case t.Version == "" || len(t.Version) > MaxVersionLen || t.Sequence == 0:
		return bad("version and sequence are required")
	case !hexRe.MatchString(t.ManifestSHA256):
		return bad("manifest_sha256 must be 64 lower-case hex digits")
	case (t.Channel == "") == (t.Device == ""):
		return bad("exactly one of channel and device must be set")
	case t.Channel != "" && !ValidChannel(t.Channel):
		return bad("channel %q is not valid", clip(t.Channel))
	case t.Device != "" && !ValidDeviceID(t.Device):
		return bad("device %q is not valid", clip(t.Device))
	case t.Rollout != "" && !rolloutIDRe.MatchString(t.Rollout):
		return bad("rollout %q is not valid", clip(t.Rollout))
	case t.Issued.IsZero() || !t.Expires.After(t.Issued):
		return bad("issued and expires are required and expires must be after issued")
	}
	return &t, nil
}

// SignTargeting makes the signed targeting of the release whose exact
// manifest bytes are rawManifest.
func SignTargeting(priv PrivateKey, rawManifest []byte, t Targeting) (*SignedTargeting, error) {
	m, err := ParseManifest(rawManifest)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(rawManifest)
	t.Schema, t.Type = TargetingSchemaVersion, "targeting"
	t.App, t.Version, t.Sequence, t.ManifestSHA256 = m.App, m.Version, m.Sequence, hex.EncodeToString(sum[:])
	doc, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	if _, err := ParseTargeting(doc); err != nil {
		return nil, err
	}
	where := "channel:" + t.Channel
	if t.Device != "" {
		where = "device:" + t.Device
	}
	return &SignedTargeting{Doc: doc, Signature: string(Sign(priv, doc, fmt.Sprintf("edgefleet targeting app:%s sequence:%d %s", m.App, m.Sequence, where)))}, nil
}

// TargetingTo is what a device expects: the channel a release arrived on
// (channel or candidate topic) or its own id (desired topic).
type TargetingTo struct {
	Channel, Device string
}

// CheckTargeting verifies st against the key set ks for the release whose
// exact manifest bytes are rawManifest, received as to, at trusted time
// now. It returns the verified targeting (its Issued raises the device's
// time floor). A key set without targeting keys needs none: (nil, nil).
func CheckTargeting(ks *KeySet, st *SignedTargeting, rawManifest []byte, to TargetingTo, now time.Time) (*Targeting, error) {
	if ks == nil || len(ks.Targeting) == 0 {
		return nil, nil
	}
	where := "channel " + to.Channel
	if to.Device != "" {
		where = "device " + to.Device
	}
	if st == nil {
		return nil, fmt.Errorf("the release carries no targeting, and key set version %d requires releases to be targeted by a targeting key; publish it with `edgefleet publish --targeting-key`: %w", ks.Version, ErrNotTargeted)
	}
	t, err := ParseTargeting(st.Doc)
	if err != nil {
		return nil, err
	}
	sig, err := ParseSignature([]byte(st.Signature))
	if err != nil {
		return nil, err
	}
	var key *ScopedKey
	for i := range ks.Targeting {
		k, _ := ParsePublicKeyLine(ks.Targeting[i].Key)
		if k.ID() == sig.KeyID {
			if !minisign.Verify(k, st.Doc, []byte(st.Signature)) {
				return nil, fmt.Errorf("the targeting signature by key %s does not verify: altered after signing: %w", KeyID(k.ID()), ErrBadSignature)
			}
			key = &ks.Targeting[i]
		}
	}
	if key == nil {
		if slices.Contains(ks.Revoked, KeyID16(sig.KeyID)) {
			return nil, fmt.Errorf("the targeting is signed by key %s, which key set version %d revokes: the targeting key may be stolen; do not install this release, and ask the operator to target it with a current targeting key: %w", KeyID(sig.KeyID), ks.Version, ErrNotTargeted)
		}
		return nil, fmt.Errorf("the targeting is signed by key %s, which key set version %d does not name as a targeting key (removed, or never delegated): target the release with a current targeting key: %w", KeyID(sig.KeyID), ks.Version, ErrNotTargeted)
	}
	sum := sha256.Sum256(rawManifest)
	if t.ManifestSHA256 != hex.EncodeToString(sum[:]) {
		return nil, fmt.Errorf("the targeting is for another build of %s (manifest sha256 %s…): mix-and-match refused: %w", t.App, t.ManifestSHA256[:12], ErrNotTargeted)
	}
	if to.Device != "" && t.Device != to.Device || to.Device == "" && t.Channel != to.Channel {
		got := "channel " + t.Channel
		if t.Device != "" {
			got = "device " + t.Device
		}
		return nil, fmt.Errorf("%s %s (sequence %d) is targeted at %s, but arrived for %s: a release re-published where it was not sent is refused: %w", t.App, t.Version, t.Sequence, got, where, ErrNotTargeted)
	}
	if t.Channel != "" && len(key.Channels) > 0 && !strings.Contains(","+strings.Join(key.Channels, ",")+",", ","+t.Channel+",") {
		return nil, fmt.Errorf("targeting key %s may target channels %s only, not %s: %w", KeyID(sig.KeyID), strings.Join(key.Channels, ", "), t.Channel, ErrNotTargeted)
	}
	if key.NotAfter != nil && !now.Before(*key.NotAfter) {
		return nil, fmt.Errorf("targeting key %s was valid until %s: %w", KeyID(sig.KeyID), key.NotAfter.UTC().Format(time.RFC3339), ErrNotTargeted)
	}
	if !now.Before(t.Expires) {
		return nil, fmt.Errorf("the targeting of %s %s at %s expired at %s (trusted time %s): the operator must renew it; a broker that stops updating cannot hold devices on it unnoticed: %w",
			t.App, t.Version, where, t.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrExpired)
	}
	return t, nil
}

// WithTargeting returns the envelope env with st set.
func WithTargeting(env []byte, st *SignedTargeting) ([]byte, error) {
	e, err := ParseEnvelope(env)
	if err != nil {
		return nil, err
	}
	e.Targeting = st
	return json.Marshal(e)
}
