package agent

// The device's root of trust (protocol/SPEC.md §8.12): the root keys from
// the config (root_keys, root_threshold), the newest key set accepted and
// the time floor, kept in data_dir/trust.json next to the anti-rollback
// floor file (and, like it, left alone by `edgefleet-agent reset`, so a
// forced state reset cannot make a device accept a replayed older key set).
//
// Crash ordering: trust.json is written atomically (temporary file, fsync,
// rename, directory fsync) before the keyring is switched to the new key
// set, so after a power cut the device holds either the old key set or the
// new one, never less than what it verified.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

const (
	trustSchema  = 1
	maxTrustFile = protocol.MaxKeySetSize*2 + 4096
)

// trustDoc is trust.json.
type trustDoc struct {
	Schema int `json:"schema"`
	// KeySet is the exact bytes of the held key set (base64), verified
	// when it was accepted; its signatures are not kept (data_dir is
	// the device's own, guarded like state.db).
	KeySet []byte `json:"keyset,omitempty"`
	// TimeFloor is the newest signed time verified (key set issued).
	TimeFloor time.Time `json:"time_floor"`
}

// trustState is the agent's root of trust in memory.
type trustState struct {
	mu    sync.Mutex
	st    protocol.TrustState
	floor time.Time
	extra []protocol.PublicKey // trusted_keys (or Options.Keyring)
	// notify, when set, is called after a key set is accepted (the MQTT
	// transport reads the releases again).
	notify func()
	// bundleErr is why the key set in the last bundle that carried a
	// refused one was ignored ("" none, or a key set was accepted since);
	// in memory only (bundle_keyset.go).
	bundleErr string
}

func (t *trustState) setNotify(f func()) {
	t.mu.Lock()
	t.notify = f
	t.mu.Unlock()
}

// TrustPath is the root-of-trust file in DataDir. It survives
// `edgefleet-agent reset`.
func (c *Config) TrustPath() string { return filepath.Join(c.DataDir, "trust.json") }

// openTrust loads the root keys and trust.json and sets a.keys: the
// trusted_keys (extra) plus, once a key set is held, its release keys
// under its policy.
func (a *Agent) openTrust(extra *protocol.Keyring) error {
	t, err := loadTrust(a.cfg, extra)
	if err != nil {
		return err
	}
	a.trust = t
	a.keys = protocol.PolicyKeyring(t.st.Held, t.extra, a.trustedNow)
	return nil
}

// loadTrust reads the root keys from the config and trust.json.
func loadTrust(cfg *Config, extra *protocol.Keyring) (*trustState, error) {
	t := &trustState{}
	if extra != nil {
		t.extra = extra.Keys()
	}
	if len(cfg.RootKeys) > 0 {
		kr, err := protocol.LoadKeyring(cfg.RootKeys...)
		if err != nil {
			return nil, fmt.Errorf("load root keys: %w", err)
		}
		t.st.Roots, t.st.Threshold = kr.Keys(), cfg.RootThreshold
	}
	b, err := os.ReadFile(cfg.TrustPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", cfg.TrustPath(), err)
	default:
		var d trustDoc
		if len(b) > maxTrustFile {
			err = fmt.Errorf("it is %d bytes, more than %d", len(b), maxTrustFile)
		} else if err = protocol.StrictUnmarshal(b, &d); err == nil && d.Schema != trustSchema {
			err = fmt.Errorf("schema %d, this agent reads %d", d.Schema, trustSchema)
		}
		var ks *protocol.KeySet
		if err == nil && len(d.KeySet) > 0 {
			ks, err = protocol.ParseKeySet(d.KeySet)
		}
		if err != nil {
			return nil, fmt.Errorf("the root-of-trust file %s cannot be read (%v); restore it from a backup, or move it aside to trust only the configured root_keys again (the device then accepts the operator's current key set afresh): %w",
				cfg.TrustPath(), err, ErrConfig)
		}
		t.floor = d.TimeFloor
		if ks != nil {
			if len(t.st.Roots) == 0 {
				return nil, fmt.Errorf("%s holds key set version %d but the config has no root_keys; put the root public keys back in root_keys: %w", cfg.TrustPath(), ks.Version, ErrConfig)
			}
			t.st.Held, t.st.Raw = ks, d.KeySet
			t.st.Roots, t.st.Threshold = ks.RootOf()
		}
	}
	return t, nil
}

// BundleVerifier returns how a device with cfg verifies bundles, read from
// its config (trusted_keys, root_keys) and trust.json without opening the
// state database (a running daemon holds it): a bundle's key set is judged
// in memory and nothing is stored. It is for choosing among bundles; the
// install verifies the chosen one for real (Install). now is the clock.
func BundleVerifier(cfg *Config, now func() time.Time) (protocol.OpenOptions, error) {
	var extra *protocol.Keyring
	if len(cfg.TrustedKeys) > 0 {
		var err error
		if extra, err = protocol.LoadKeyring(cfg.TrustedKeys...); err != nil {
			return protocol.OpenOptions{}, err
		}
	}
	t, err := loadTrust(cfg, extra)
	if err != nil {
		return protocol.OpenOptions{}, err
	}
	trusted := func() time.Time {
		if n := now(); n.After(t.floor) {
			return n
		}
		return t.floor
	}
	o := protocol.OpenOptions{Keyring: protocol.PolicyKeyring(t.st.Held, t.extra, trusted)}
	if len(t.st.Roots) > 0 {
		o.KeySet = func(raw []byte) *protocol.Keyring {
			c, docs, err := protocol.ParseKeySetChain(raw)
			if err != nil {
				return nil
			}
			st, err := t.st.Advance(c, docs, trusted())
			if err != nil {
				return nil
			}
			return protocol.PolicyKeyring(st.Held, t.extra, trusted)
		}
	}
	return o, nil
}

// trustedNow is the clock, never below the time floor: a device whose
// clock was reset to the past cannot be made to accept what expired.
func (a *Agent) trustedNow() time.Time {
	now := a.opts.Now()
	if a.trust == nil {
		return now
	}
	a.trust.mu.Lock()
	defer a.trust.mu.Unlock()
	if now.Before(a.trust.floor) {
		return a.trust.floor
	}
	return now
}

// trustInfo is Trust for a status: nil when there is nothing to say.
func (a *Agent) trustInfo() *TrustInfo {
	ti := a.Trust()
	if ti == (TrustInfo{}) {
		return nil
	}
	return &ti
}

// TrustInfo is what status reports about the root of trust.
type TrustInfo struct {
	// KeySet is the version of the key set held (0: none).
	KeySet uint64 `json:"keyset,omitempty"`
	// Expires is when the held key set expires.
	Expires time.Time `json:"keyset_expires,omitzero"`
	// TimeFloor is the newest signed time verified.
	TimeFloor time.Time `json:"time_floor,omitzero"`
	// ClockBehind is true when the device clock is below the time floor.
	ClockBehind bool `json:"clock_behind,omitempty"`
	// Error is why the key set carried by the last bundle that had a bad
	// one was ignored ("" none since the last key set accepted).
	Error string `json:"keyset_error,omitempty"`
}

// Trust reports the key set held and the time floor.
func (a *Agent) Trust() TrustInfo {
	if a.trust == nil {
		return TrustInfo{}
	}
	now := a.opts.Now()
	a.trust.mu.Lock()
	defer a.trust.mu.Unlock()
	ti := TrustInfo{KeySet: a.trust.st.Version(), TimeFloor: a.trust.floor, ClockBehind: now.Before(a.trust.floor), Error: a.trust.bundleErr}
	if a.trust.st.Held != nil {
		ti.Expires = a.trust.st.Held.Expires
	}
	return ti
}

// AcceptKeySet verifies a key set chain message (from the broker, a
// bundle or a sideload) against the roots the device holds and, when it
// carries a newer valid key set, stores it and trusts its release keys
// from then on. It returns the version held afterwards. A chain whose
// newest key set is not newer gives protocol.ErrRollback (callers that
// see the same retained message again ignore it).
func (a *Agent) AcceptKeySet(msg []byte) (uint64, error) {
	t, c, docs, err := a.parseKeySet(msg)
	if err != nil {
		if t != nil {
			return t.version(), err
		}
		return 0, err
	}
	now := a.trustedNow()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.st.Advance(c, docs, now)
	if err != nil {
		return t.st.Version(), err
	}
	floor := t.floor
	if st.Held.Issued.After(floor) {
		floor = st.Held.Issued
	}
	b, _ := json.MarshalIndent(trustDoc{Schema: trustSchema, KeySet: st.Raw, TimeFloor: floor.UTC()}, "", "  ")
	if err := protocol.WriteFileAtomic(a.cfg.TrustPath(), 0o600, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	}); err != nil {
		return t.st.Version(), fmt.Errorf("store key set version %d in %s: %w", st.Version(), a.cfg.TrustPath(), err)
	}
	from := t.st.Version()
	t.st, t.floor = st, floor
	t.bundleErr = ""
	// trustedNow takes t.mu: the keyring calls it while verifying, never
	// while we hold it here.
	a.keys.Replace(protocol.PolicyKeyring(st.Held, t.extra, a.trustedNow))
	a.opts.Logf("trust: accepted key set version %d (was %d): %d release keys, %d revoked, expires %s",
		st.Version(), from, len(st.Held.Release), len(st.Held.Revoked), st.Held.Expires.UTC().Format(time.RFC3339))
	if t.notify != nil {
		t.notify()
	}
	return st.Version(), nil
}

// parseKeySet checks that the device can judge key sets and parses msg.
// On an error it returns the trust state (nil without one) and the error.
func (a *Agent) parseKeySet(msg []byte) (*trustState, *protocol.KeySetChain, []*protocol.KeySet, error) {
	if a.trust == nil || len(a.trust.st.Roots) == 0 {
		return nil, nil, nil, fmt.Errorf("this device has no root_keys in its config, so it cannot verify a key set; add the root public key files under root_keys: %w", ErrConfig)
	}
	c, docs, err := protocol.ParseKeySetChain(msg)
	if err != nil {
		return a.trust, nil, nil, fmt.Errorf("key set: %w", err)
	}
	return a.trust, c, docs, nil
}

// keyringIfAccepted is what AcceptKeySet would make a.keys, without
// storing anything: the keyring that trusts msg's key set when it is
// newer and valid (for a dry run). The error says why it would not be.
func (a *Agent) keyringIfAccepted(msg []byte) (*protocol.Keyring, uint64, error) {
	t, c, docs, err := a.parseKeySet(msg)
	if err != nil {
		return nil, 0, err
	}
	now := a.trustedNow()
	t.mu.Lock()
	st, err := t.st.Advance(c, docs, now)
	extra := t.extra
	t.mu.Unlock()
	if err != nil {
		return nil, st.Version(), err
	}
	return protocol.PolicyKeyring(st.Held, extra, a.trustedNow), st.Version(), nil
}

func (t *trustState) version() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st.Version()
}
