package agent

// A key set inside a bundle (protocol/SPEC.md §2, §8.12): the optional
// first entry keyset.json is judged before the manifest signature, with the
// code that judges one from the broker or a sideload (AcceptKeySet), so a
// bundle signed by a freshly rotated release key installs on a device that
// held only the older key set. The entry is untrusted: it changes trust
// only through TrustState.Advance, and a bad one never stops a bundle whose
// manifest verifies with the keys already held — it is ignored, logged, and
// reported in the install's answer and the status (keyset_error).

import (
	"errors"
	"fmt"
	"io"

	"github.com/edgefleet/edgefleet/protocol"
)

// bundleKeySet is what became of one bundle's key set.
type bundleKeySet struct {
	a   *Agent
	dry bool
	// note is the sentence for the operator ("" nothing to say).
	note string
	// err is why the key set was ignored (nil: applied, absent, or not
	// newer than the one held).
	err error
}

// openBundle opens a bundle for Install (dry false) or Check (dry true),
// applying its key set first. The returned bundleKeySet is never nil.
func (a *Agent) openBundle(r io.Reader, dry bool) (*protocol.Bundle, *bundleKeySet, error) {
	k := &bundleKeySet{a: a, dry: dry}
	b, err := protocol.OpenBundleWith(r, protocol.OpenOptions{Keyring: a.keys, KeySet: k.apply})
	if err != nil {
		if k.err != nil {
			return nil, k, fmt.Errorf("verify bundle (the key set it carries was ignored: %v): %w", k.err, err)
		}
		return nil, k, fmt.Errorf("verify bundle: %w", err)
	}
	return b, k, nil
}

// apply is protocol.OpenOptions.KeySet: it returns the keyring that
// verifies the manifest (nil: a.keys, which AcceptKeySet updated in place).
func (k *bundleKeySet) apply(raw []byte) *protocol.Keyring {
	a := k.a
	if a.trust == nil || len(a.trust.st.Roots) == 0 {
		k.note = "the bundle carries a key set; this device has no root_keys, so it ignores it and verifies with its trusted_keys"
		return nil
	}
	from := a.Trust().KeySet
	if k.dry {
		kr, v, err := a.keyringIfAccepted(raw)
		switch {
		case err == nil:
			k.note = fmt.Sprintf("the bundle's key set version %d would be accepted (the device holds %d); a check stores nothing", v, from)
			return kr
		case errors.Is(err, protocol.ErrRollback):
			return nil
		default:
			k.err = err
			k.note = fmt.Sprintf("the key set in the bundle would be ignored: %v", err)
			return nil
		}
	}
	v, err := a.AcceptKeySet(raw)
	switch {
	case err == nil:
		k.note = fmt.Sprintf("key set version %d from the bundle accepted (was %d)", v, from)
	case errors.Is(err, protocol.ErrRollback):
		// Old bundles in the field carry old key sets: nothing to say.
	default:
		k.err = err
		k.note = fmt.Sprintf("the key set in the bundle was ignored (the device keeps key set version %d): %v", from, err)
		a.trust.mu.Lock()
		a.trust.bundleErr = "key set in a bundle ignored: " + err.Error()
		a.trust.mu.Unlock()
		a.opts.Logf("trust: %s", k.note)
	}
	return nil
}
