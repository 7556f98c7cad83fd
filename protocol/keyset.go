package protocol

// Key sets (SPEC.md §8.12): an offline root of trust. A root key (or
// several, with a threshold) signs a small versioned document naming the
// release keys, what each may sign, their validity, the revoked key ids
// and the key set's own expiry. Devices provisioned with the root's public
// keys accept a key set only when a threshold of the roots they hold signed
// it, its version is higher than the one they hold and it has not expired;
// a key set that changes the roots must also be signed by a threshold of
// the new roots (TUF's root rotation), and a device walks a chain of key
// sets in version order.
//
// Everything here parses untrusted input (a key set arrives over MQTT, in
// bundles and by sideload): sizes are checked before allocating, JSON is
// strict (StrictUnmarshal), and nothing is trusted before its signatures
// are counted.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"aead.dev/minisign"
)

// Key set schema and limits (SPEC.md §8.12).
const (
	KeySetSchemaVersion = 1
	// MaxKeySetSize bounds one key set document (the signed JSON bytes).
	MaxKeySetSize = 32 << 10
	// MaxKeySetMessage bounds a key set chain message (the MQTT payload,
	// the sideloaded file, the bundle entry).
	MaxKeySetMessage = 256 << 10
	// MaxKeySetChain is the most key sets one chain message carries.
	MaxKeySetChain = 16
	// MaxKeySetSignatures is the most signatures on one key set.
	MaxKeySetSignatures = 8
	// MaxRootKeys is the most root keys (and targeting keys) a key set names.
	MaxRootKeys = 8
	// MaxReleaseKeys is the most release keys a key set names.
	MaxReleaseKeys = 64
	// MaxRevoked is the most revoked key ids a key set lists.
	MaxRevoked = 256
	// MaxScope is the most apps, profiles or channels in one key's scope.
	MaxScope = 64
)

// KeySetTopic is the retained MQTT topic that holds the operator's key set
// chain (SPEC.md §8.12).
const KeySetTopic = TopicPrefix + "keyset"

var (
	// ErrRevokedKey: the signing key is listed as revoked by the key set
	// the verifier holds. Final for the release.
	ErrRevokedKey = errors.New("signed by a revoked key")
	// ErrKeyScope: the signing key may not sign this app or profile, or
	// is outside its validity period. Final for the release.
	ErrKeyScope = errors.New("signing key not allowed for this release")
	// ErrThreshold: a key set is not signed by enough of the roots the
	// verifier holds (or, on a root rotation, of the new roots).
	ErrThreshold = errors.New("not signed by enough root keys")
	// ErrRollback: a key set (or targeting) is not newer than the one held.
	ErrRollback = errors.New("not newer than the one held")
)

// KeySet is the signed document (schema 1). Times are RFC 3339.
type KeySet struct {
	Schema  int       `json:"schema"`
	Type    string    `json:"type"` // "keyset"
	Version uint64    `json:"version"`
	Issued  time.Time `json:"issued"`
	Expires time.Time `json:"expires"`
	// Root are the keys that must sign the next key set.
	Root RootKeys `json:"root"`
	// Release are the keys that sign release manifests.
	Release []ReleaseKey `json:"release"`
	// Targeting are the keys that sign targeting (§8.13); none: releases
	// need no targeting.
	Targeting []ScopedKey `json:"targeting,omitempty"`
	// Revoked are key ids (minisign's 16 hex digits) never trusted again,
	// whatever else names them (also keys in a device's trusted_keys).
	Revoked []string `json:"revoked,omitempty"`
}

// RootKeys is a threshold of root keys.
type RootKeys struct {
	Threshold int      `json:"threshold"`
	Keys      []string `json:"keys"` // minisign public keys, the base64 line (RW…)
}

// ReleaseKey is a release key and what it may sign. An empty list allows
// everything; a zero time is no bound.
type ReleaseKey struct {
	Key       string     `json:"key"`
	Apps      []string   `json:"apps,omitempty"`
	Profiles  []string   `json:"profiles,omitempty"`
	NotBefore *time.Time `json:"not_before,omitempty"`
	NotAfter  *time.Time `json:"not_after,omitempty"`
}

// ScopedKey is a targeting key and the channels it may target (empty:
// every channel and device).
type ScopedKey struct {
	Key      string     `json:"key"`
	Channels []string   `json:"channels,omitempty"`
	NotAfter *time.Time `json:"not_after,omitempty"`
}

// SignedKeySet is a key set's exact signed bytes and its minisign
// signatures (one per signing root).
type SignedKeySet struct {
	KeySet     []byte   `json:"keyset"` // base64 on the wire
	Signatures []string `json:"signatures"`
}

// KeySetChain is the message on KeySetTopic, in a bundle (keyset.json) and
// sideloaded: the key sets a device may need, in increasing version.
type KeySetChain struct {
	Schema  int            `json:"schema"`
	KeySets []SignedKeySet `json:"keysets"`
}

var keyIDRe = regexp.MustCompile(`^[0-9A-F]{16}$`)

// ParsePublicKeyLine decodes the base64 line of a minisign public key.
func ParsePublicKeyLine(s string) (PublicKey, error) {
	if len(s) != 56 {
		return PublicKey{}, fmt.Errorf("public key %q is not a minisign public key line (56 characters): %w", clip(s), ErrMalformed)
	}
	return ParsePublicKey([]byte(s))
}

// PublicKeyLine encodes k as the base64 line of a minisign public key.
func PublicKeyLine(k PublicKey) string {
	b, _ := k.MarshalText()
	lines := strings.Split(string(bytes.TrimSpace(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func checkNames(what string, names []string, re func(string) bool) error {
	if len(names) > MaxScope {
		return fmt.Errorf("%s lists %d names, more than %d: %w", what, len(names), MaxScope, ErrTooLarge)
	}
	seen := map[string]bool{}
	for _, n := range names {
		if !re(n) || seen[n] {
			return fmt.Errorf("%s: %q is not a valid name or is listed twice: %w", what, clip(n), ErrMalformed)
		}
		seen[n] = true
	}
	return nil
}

func validName(s string) bool { return appRe.MatchString(s) }

// ParseKeySet decodes a key set document strictly and checks every field.
// It does not check signatures: see KeySetVerifier.
func ParseKeySet(b []byte) (*KeySet, error) {
	if len(b) > MaxKeySetSize {
		return nil, fmt.Errorf("key set is %d bytes, more than the %d allowed: %w", len(b), MaxKeySetSize, ErrTooLarge)
	}
	if err := checkSchemaVersion(b, "key set", KeySetSchemaVersion); err != nil {
		return nil, err
	}
	var ks KeySet
	if err := StrictUnmarshal(b, &ks); err != nil {
		return nil, fmt.Errorf("key set: %v: %w", err, ErrMalformed)
	}
	if err := ks.check(); err != nil {
		return nil, fmt.Errorf("key set version %d: %w", ks.Version, err)
	}
	return &ks, nil
}

func (ks *KeySet) check() error {
	if ks.Type != "keyset" {
		return fmt.Errorf("type is %q, want \"keyset\": %w", clip(ks.Type), ErrMalformed)
	}
	if ks.Version == 0 {
		return fmt.Errorf("version must be at least 1: %w", ErrMalformed)
	}
	if ks.Issued.IsZero() || ks.Expires.IsZero() || !ks.Expires.After(ks.Issued) {
		return fmt.Errorf("issued and expires are required and expires must be after issued: %w", ErrMalformed)
	}
	ids := map[uint64]string{}
	addKey := func(role, s string) (PublicKey, error) {
		k, err := ParsePublicKeyLine(s)
		if err != nil {
			return k, fmt.Errorf("%s key: %w", role, err)
		}
		if prev, ok := ids[k.ID()]; ok && prev != role {
			// One key, two roles: a stolen release key would then also
			// sign key sets. Refuse.
			return k, fmt.Errorf("key %s is both a %s and a %s key; use separate keys: %w", KeyID(k.ID()), prev, role, ErrMalformed)
		} else if ok {
			return k, fmt.Errorf("%s key %s is listed twice: %w", role, KeyID(k.ID()), ErrMalformed)
		}
		ids[k.ID()] = role
		return k, nil
	}
	if n := len(ks.Root.Keys); n == 0 || n > MaxRootKeys {
		return fmt.Errorf("root lists %d keys, want 1..%d: %w", n, MaxRootKeys, ErrMalformed)
	}
	if ks.Root.Threshold < 1 || ks.Root.Threshold > len(ks.Root.Keys) {
		return fmt.Errorf("root threshold %d, want 1..%d (the number of root keys): %w", ks.Root.Threshold, len(ks.Root.Keys), ErrMalformed)
	}
	for _, s := range ks.Root.Keys {
		if _, err := addKey("root", s); err != nil {
			return err
		}
	}
	if len(ks.Release) > MaxReleaseKeys {
		return fmt.Errorf("%d release keys, more than %d: %w", len(ks.Release), MaxReleaseKeys, ErrTooLarge)
	}
	for _, r := range ks.Release {
		k, err := addKey("release", r.Key)
		if err != nil {
			return err
		}
		if err := checkNames("release key "+KeyID(k.ID())+" apps", r.Apps, validName); err != nil {
			return err
		}
		if err := checkNames("release key "+KeyID(k.ID())+" profiles", r.Profiles, validName); err != nil {
			return err
		}
		if r.NotBefore != nil && r.NotAfter != nil && !r.NotAfter.After(*r.NotBefore) {
			return fmt.Errorf("release key %s: not_after must be after not_before: %w", KeyID(k.ID()), ErrMalformed)
		}
	}
	if len(ks.Targeting) > MaxRootKeys {
		return fmt.Errorf("%d targeting keys, more than %d: %w", len(ks.Targeting), MaxRootKeys, ErrTooLarge)
	}
	for _, t := range ks.Targeting {
		k, err := addKey("targeting", t.Key)
		if err != nil {
			return err
		}
		if err := checkNames("targeting key "+KeyID(k.ID())+" channels", t.Channels, validName); err != nil {
			return err
		}
	}
	if len(ks.Revoked) > MaxRevoked {
		return fmt.Errorf("%d revoked key ids, more than %d: %w", len(ks.Revoked), MaxRevoked, ErrTooLarge)
	}
	seen := map[string]bool{}
	for _, id := range ks.Revoked {
		if !keyIDRe.MatchString(id) || seen[id] {
			return fmt.Errorf("revoked key id %q is not 16 upper-case hex digits or is listed twice: %w", clip(id), ErrMalformed)
		}
		seen[id] = true
		for kid, role := range ids {
			if KeyID16(kid) == id {
				return fmt.Errorf("%s key %s is also listed as revoked: %w", role, id, ErrMalformed)
			}
		}
	}
	return nil
}

// KeyID16 formats a key id as 16 upper-case hex digits (the form key sets
// list revoked ids in; KeyID drops leading zeros as minisign prints).
func KeyID16(id uint64) string { return fmt.Sprintf("%016X", id) }

// checkSchemaVersion reads "schema" first so that a newer document is
// refused as unsupported rather than as malformed.
func checkSchemaVersion(b []byte, what string, want int) error {
	var probe struct {
		Schema json.RawMessage `json:"schema"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return fmt.Errorf("%s is not a JSON object: %v: %w", what, err, ErrMalformed)
	}
	if len(probe.Schema) == 0 {
		return fmt.Errorf("%s has no schema: %w", what, ErrMalformed)
	}
	if string(probe.Schema) != fmt.Sprint(want) {
		return fmt.Errorf("%s schema %s is not supported (this build reads %d); update the agent: %w", what, clip(string(probe.Schema)), want, ErrSchema)
	}
	return nil
}

// ParseKeySetChain decodes a key set chain message strictly: schema 1,
// 1..MaxKeySetChain key sets, each ≤ MaxKeySetSize with 1..MaxKeySetSignatures
// signatures of ≤ MaxSignatureSize. The key sets are parsed too (without
// checking signatures) and must be in strictly increasing version.
func ParseKeySetChain(b []byte) (*KeySetChain, []*KeySet, error) {
	if len(b) == 0 {
		return nil, nil, fmt.Errorf("key set message is empty: %w", ErrMalformed)
	}
	if len(b) > MaxKeySetMessage {
		return nil, nil, fmt.Errorf("key set message is %d bytes, more than the %d allowed: %w", len(b), MaxKeySetMessage, ErrTooLarge)
	}
	if err := checkSchemaVersion(b, "key set message", KeySetSchemaVersion); err != nil {
		return nil, nil, err
	}
	var c KeySetChain
	if err := StrictUnmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("key set message: %v: %w", err, ErrMalformed)
	}
	if n := len(c.KeySets); n == 0 || n > MaxKeySetChain {
		return nil, nil, fmt.Errorf("key set message holds %d key sets, want 1..%d: %w", n, MaxKeySetChain, ErrMalformed)
	}
	docs := make([]*KeySet, len(c.KeySets))
	for i, s := range c.KeySets {
		if n := len(s.Signatures); n == 0 || n > MaxKeySetSignatures {
			return nil, nil, fmt.Errorf("key set %d of the message has %d signatures, want 1..%d: %w", i+1, n, MaxKeySetSignatures, ErrMalformed)
		}
		for _, sig := range s.Signatures {
			if len(sig) == 0 || len(sig) > MaxSignatureSize {
				return nil, nil, fmt.Errorf("key set %d of the message: a signature is %d bytes, want 1..%d: %w", i+1, len(sig), MaxSignatureSize, ErrMalformed)
			}
		}
		ks, err := ParseKeySet(s.KeySet)
		if err != nil {
			return nil, nil, err
		}
		if i > 0 && ks.Version <= docs[i-1].Version {
			return nil, nil, fmt.Errorf("key set message: version %d follows version %d; versions must increase: %w", ks.Version, docs[i-1].Version, ErrMalformed)
		}
		docs[i] = ks
	}
	return &c, docs, nil
}

// MarshalKeySetChain encodes a chain message.
func MarshalKeySetChain(sets ...SignedKeySet) ([]byte, error) {
	b, err := json.Marshal(KeySetChain{Schema: KeySetSchemaVersion, KeySets: sets})
	if err != nil {
		return nil, err
	}
	if _, _, err := ParseKeySetChain(b); err != nil {
		return nil, err
	}
	return b, nil
}

// MarshalKeySet encodes a key set (indented, stable) after checking it.
func MarshalKeySet(ks *KeySet) ([]byte, error) {
	ks.Schema, ks.Type = KeySetSchemaVersion, "keyset"
	b, err := json.MarshalIndent(ks, "", "  ")
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if _, err := ParseKeySet(b); err != nil {
		return nil, err
	}
	return b, nil
}

// SignKeySet signs the key set bytes with one root key; the trusted comment
// names the version so that `minisign -V` shows it.
func SignKeySet(priv PrivateKey, raw []byte) ([]byte, error) {
	ks, err := ParseKeySet(raw)
	if err != nil {
		return nil, err
	}
	return Sign(priv, raw, fmt.Sprintf("edgefleet keyset version:%d", ks.Version)), nil
}

// RootOf returns the root keys and threshold a key set names.
func (ks *KeySet) RootOf() ([]PublicKey, int) {
	var keys []PublicKey
	for _, s := range ks.Root.Keys {
		k, _ := ParsePublicKeyLine(s) // checked by ParseKeySet
		keys = append(keys, k)
	}
	return keys, ks.Root.Threshold
}

// countSigners returns how many distinct keys of roots made a valid
// signature of raw among sigs.
func countSigners(roots []PublicKey, raw []byte, sigs []string) int {
	valid := map[uint64]bool{}
	for _, s := range sigs {
		sig, err := ParseSignature([]byte(s))
		if err != nil {
			continue
		}
		for _, k := range roots {
			if k.ID() == sig.KeyID && minisign.Verify(k, raw, []byte(s)) {
				valid[k.ID()] = true
			}
		}
	}
	return len(valid)
}

func sameRoot(a, b RootKeys) bool {
	if a.Threshold != b.Threshold || len(a.Keys) != len(b.Keys) {
		return false
	}
	x, y := append([]string(nil), a.Keys...), append([]string(nil), b.Keys...)
	sort.Strings(x)
	sort.Strings(y)
	return strings.Join(x, ",") == strings.Join(y, ",")
}

// TrustState is what a verifier holds: the roots configured at
// provisioning, or the newest key set it accepted.
type TrustState struct {
	// Roots and Threshold sign the next key set.
	Roots     []PublicKey
	Threshold int
	// Held is the newest accepted key set (nil: none yet) and Raw its bytes.
	Held *KeySet
	Raw  []byte
}

// Version is the held key set's version (0: none).
func (s *TrustState) Version() uint64 {
	if s.Held == nil {
		return 0
	}
	return s.Held.Version
}

// Advance walks a chain in version order from the state s and returns the
// new state, or an error saying why the chain (or its newest key set) is
// refused. Key sets not newer than the one held are skipped; a chain
// whose newest key set is not newer than the one held is refused with
// ErrRollback. Each newer key set must carry signatures of a threshold of
// the roots held at that point, and, when it changes the roots, also of a
// threshold of its own roots. On any error s is returned unchanged. Only the newest key set must be unexpired at
// now (intermediate ones may have expired: a device offline for a year
// still walks the rotations).
func (s TrustState) Advance(c *KeySetChain, docs []*KeySet, now time.Time) (TrustState, error) {
	orig := s
	last := docs[len(docs)-1]
	if last.Version == s.Version() {
		return s, fmt.Errorf("the device already holds key set version %d: %w", last.Version, ErrRollback)
	}
	if last.Version < s.Version() {
		return s, fmt.Errorf("the key set on offer is version %d, older than version %d that the device holds; a replayed older key set is ignored: %w", last.Version, s.Version(), ErrRollback)
	}
	for i, ks := range docs {
		if ks.Version <= s.Version() {
			continue
		}
		raw, sigs := c.KeySets[i].KeySet, c.KeySets[i].Signatures
		if n := countSigners(s.Roots, raw, sigs); n < s.Threshold {
			return orig, fmt.Errorf("key set version %d carries valid signatures of %d of the root keys the device trusts (%s), it needs %d; sign it with `edgefleet keyset sign`: %w",
				ks.Version, n, strings.Join(idsOf(s.Roots), ", "), s.Threshold, ErrThreshold)
		}
		if s.Held == nil || !sameRoot(s.Held.Root, ks.Root) {
			roots, th := ks.RootOf()
			if n := countSigners(roots, raw, sigs); n < th {
				return orig, fmt.Errorf("key set version %d changes the root keys but carries valid signatures of %d of its new root keys (%s), it needs %d: a root rotation must be signed by the old and the new roots: %w",
					ks.Version, n, strings.Join(idsOf(roots), ", "), th, ErrThreshold)
			}
		}
		s.Roots, s.Threshold = ks.RootOf()
		s.Held, s.Raw = ks, raw
	}
	if !now.Before(last.Expires) {
		return orig, fmt.Errorf("key set version %d expired at %s (trusted time %s); the operator must sign a fresh one: %w",
			last.Version, last.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrExpired)
	}
	return s, nil
}

func idsOf(keys []PublicKey) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = KeyID(k.ID())
	}
	return ids
}

// keyPolicy restricts a Keyring to what a key set allows.
type keyPolicy struct {
	version uint64
	expires time.Time
	revoked map[uint64]bool
	scopes  map[uint64]ReleaseKey // absent: unscoped (trusted_keys)
	now     func() time.Time
}

// PolicyKeyring returns a keyring trusting the key set's release keys (with
// their scopes and validity) and the extra unscoped keys (a device's
// trusted_keys), minus the revoked ones. now is the verifier's trusted time
// (its clock, never below its time floor). A nil key set gives a plain
// keyring of extra.
func PolicyKeyring(ks *KeySet, extra []PublicKey, now func() time.Time) *Keyring {
	if ks == nil {
		return NewKeyring(extra...)
	}
	p := &keyPolicy{version: ks.Version, expires: ks.Expires, revoked: map[uint64]bool{}, scopes: map[uint64]ReleaseKey{}, now: now}
	kr := &Keyring{policy: p}
	for _, id := range ks.Revoked {
		v, _ := strconv.ParseUint(id, 16, 64) // 16 hex digits: checked by ParseKeySet (fmt's scanner would cost the agent 25 KB)
		p.revoked[v] = true
	}
	for _, r := range ks.Release {
		k, _ := ParsePublicKeyLine(r.Key)
		p.scopes[k.ID()] = r
		kr.keys = append(kr.keys, k)
	}
	for _, k := range extra {
		if _, dup := p.scopes[k.ID()]; !dup {
			kr.keys = append(kr.keys, k)
		}
	}
	return kr
}

// check refuses a signature by key id before it is verified: revoked, or
// the key set expired.
func (p *keyPolicy) check(id uint64) error {
	if p.revoked[id] {
		return fmt.Errorf("the manifest is signed by key %s, which key set version %d revokes: the key may be stolen; do not install it, and ask the operator for a release signed with a current key: %w",
			KeyID(id), p.version, ErrRevokedKey)
	}
	if now := p.now(); !now.Before(p.expires) {
		return fmt.Errorf("the device's key set (version %d) expired at %s (trusted time %s): no release is installed until the operator publishes a fresh key set (`edgefleet keyset publish`): %w",
			p.version, p.expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrExpired)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Authorize checks that key may sign m under the keyring's key set: the
// app and profile within the key's scope, the trusted time within its
// validity. A keyring without a key set allows everything.
func (kr *Keyring) Authorize(key PublicKey, m *Manifest) error {
	kr.mu.RLock()
	p := kr.policy
	kr.mu.RUnlock()
	if p == nil {
		return nil
	}
	r, ok := p.scopes[key.ID()]
	if !ok {
		return nil // a trusted_keys key: unscoped, as before key sets
	}
	id := KeyID(key.ID())
	if len(r.Apps) > 0 && !contains(r.Apps, m.App) {
		return fmt.Errorf("release key %s may sign only apps %s (key set version %d), not %q: %w", id, strings.Join(r.Apps, ", "), p.version, m.App, ErrKeyScope)
	}
	if len(r.Profiles) > 0 && !contains(r.Profiles, m.Profile) {
		return fmt.Errorf("release key %s may sign only profiles %s (key set version %d), not %q: %w", id, strings.Join(r.Profiles, ", "), p.version, m.Profile, ErrKeyScope)
	}
	now := p.now()
	if r.NotBefore != nil && now.Before(*r.NotBefore) {
		return fmt.Errorf("release key %s is valid only from %s (key set version %d): %w", id, r.NotBefore.UTC().Format(time.RFC3339), p.version, ErrKeyScope)
	}
	if r.NotAfter != nil && !now.Before(*r.NotAfter) {
		return fmt.Errorf("release key %s was valid only until %s (key set version %d); ask the operator to re-sign with a current key: %w", id, r.NotAfter.UTC().Format(time.RFC3339), p.version, ErrKeyScope)
	}
	return nil
}

// Replace makes kr trust exactly what other trusts (keys and key set
// policy); safe while other goroutines verify with kr.
func (kr *Keyring) Replace(other *Keyring) {
	other.mu.RLock()
	keys, p := append([]PublicKey(nil), other.keys...), other.policy
	other.mu.RUnlock()
	kr.mu.Lock()
	kr.keys, kr.policy = keys, p
	kr.mu.Unlock()
}

// VerifyManifest verifies sig over raw with kr, parses the manifest and
// authorizes the signing key for it: what every verifier of a release
// should call.
func (kr *Keyring) VerifyManifest(raw, sig []byte) (*Manifest, PublicKey, error) {
	key, err := kr.Verify(raw, sig)
	if err != nil {
		return nil, key, err
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return nil, key, err
	}
	if err := kr.Authorize(key, m); err != nil {
		return nil, key, err
	}
	return m, key, nil
}
