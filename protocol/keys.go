package protocol

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"aead.dev/minisign"
)

// PublicKey and PrivateKey are minisign keys: the files are interchangeable
// with the stock minisign tool.
type (
	PublicKey  = minisign.PublicKey
	PrivateKey = minisign.PrivateKey
)

// KeyID formats a minisign key id the way the minisign tool prints it.
func KeyID(id uint64) string { return strings.ToUpper(strconv.FormatUint(id, 16)) }

// GenerateKey returns a new key pair.
func GenerateKey() (PublicKey, PrivateKey, error) { return minisign.GenerateKey(nil) }

// MarshalPrivateKey encodes priv in minisign's secret key format, encrypted
// with passphrase (scrypt, as minisign does) unless passphrase is empty.
func MarshalPrivateKey(priv PrivateKey, passphrase string) ([]byte, error) {
	if passphrase == "" {
		return priv.MarshalText()
	}
	return minisign.EncryptKey(passphrase, priv)
}

// IsEncryptedKey reports whether secret-key bytes are passphrase-protected.
func IsEncryptedKey(b []byte) bool { return minisign.IsEncrypted(b) }

// ParsePrivateKey decodes a minisign secret key, decrypting it with
// passphrase when it is encrypted.
func ParsePrivateKey(b []byte, passphrase string) (PrivateKey, error) {
	if minisign.IsEncrypted(b) {
		k, err := minisign.DecryptKey(passphrase, b)
		if err != nil {
			return PrivateKey{}, fmt.Errorf("cannot decrypt the secret key (wrong passphrase?): %w", err)
		}
		return k, nil
	}
	var k PrivateKey
	if err := k.UnmarshalText(b); err != nil {
		return PrivateKey{}, fmt.Errorf("secret key: %v: %w", err, ErrMalformed)
	}
	return k, nil
}

// ParsePublicKey decodes a minisign public key (the two-line file, or the
// base64 line alone).
func ParsePublicKey(b []byte) (PublicKey, error) {
	var k PublicKey
	if err := k.UnmarshalText(bytes.TrimSpace(b)); err != nil {
		return PublicKey{}, fmt.Errorf("public key: %v: %w", err, ErrMalformed)
	}
	return k, nil
}

// Keyring is the set of public keys a verifier trusts. Several keys allow
// rotation: ship the new public key to devices, then sign with it.
type Keyring struct {
	mu   sync.RWMutex
	keys []PublicKey
	// policy, when set, is the key set the keys come from (keyset.go):
	// revoked ids, scopes, validity and the key set's expiry.
	policy *keyPolicy
}

// NewKeyring returns a keyring trusting keys.
func NewKeyring(keys ...PublicKey) *Keyring { return &Keyring{keys: append([]PublicKey(nil), keys...)} }

// LoadKeyring reads minisign public key files.
func LoadKeyring(paths ...string) (*Keyring, error) {
	kr := &Keyring{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("trusted key: %w", err)
		}
		k, err := ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("trusted key %s: %w", p, err)
		}
		kr.Add(k)
	}
	if len(kr.keys) == 0 {
		return nil, fmt.Errorf("no trusted keys given: %w", ErrMalformed)
	}
	return kr, nil
}

// Add trusts k as well.
func (kr *Keyring) Add(k PublicKey) {
	kr.mu.Lock()
	kr.keys = append(kr.keys, k)
	kr.mu.Unlock()
}

// Keys returns the trusted keys.
func (kr *Keyring) Keys() []PublicKey {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return append([]PublicKey(nil), kr.keys...)
}

// IDs returns the trusted key ids as minisign prints them.
func (kr *Keyring) IDs() []string {
	keys := kr.Keys()
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = KeyID(k.ID())
	}
	return ids
}

// Signature is a parsed minisign signature.
type Signature = minisign.Signature

// ParseSignature decodes minisign signature bytes.
func ParseSignature(b []byte) (Signature, error) {
	var s Signature
	if len(b) > MaxSignatureSize {
		return s, fmt.Errorf("signature is %d bytes, more than %d: %w", len(b), MaxSignatureSize, ErrTooLarge)
	}
	if err := s.UnmarshalText(b); err != nil {
		return s, fmt.Errorf("signature file: %v: %w", err, ErrMalformed)
	}
	return s, nil
}

// Verify checks that sig is a valid minisign signature of msg by one of the
// trusted keys and returns that key. Both the legacy and the prehashed
// (minisign ≥ 0.10 default) algorithms are accepted, and the trusted
// comment is verified too.
func (kr *Keyring) Verify(msg, sig []byte) (PublicKey, error) {
	s, err := ParseSignature(sig)
	if err != nil {
		return PublicKey{}, err
	}
	kr.mu.RLock()
	keys, policy := kr.keys, kr.policy
	kr.mu.RUnlock()
	if policy != nil {
		if err := policy.check(s.KeyID); err != nil {
			return PublicKey{}, err
		}
	}
	for _, k := range keys {
		if k.ID() != s.KeyID {
			continue
		}
		if minisign.Verify(k, msg, sig) {
			return k, nil
		}
		return PublicKey{}, fmt.Errorf("the manifest signature does not verify with trusted key %s: the bundle was altered after signing or is corrupt; do not install it, and get a fresh copy from the operator: %w",
			KeyID(k.ID()), ErrBadSignature)
	}
	if len(keys) == 0 {
		return PublicKey{}, fmt.Errorf("the manifest is signed by key %s, but this device trusts no release key yet: it has root_keys and no key set; publish one (`edgefleet keyset publish`), sideload it (`edgefleet-agent keyset`) or carry it in the bundle (`edgefleet pack --keyset`): %w", KeyID(s.KeyID), ErrUnknownKey)
	}
	if policy != nil {
		return PublicKey{}, fmt.Errorf("the manifest is signed by key %s, which is not among the trusted keys (%s, from key set version %d and trusted_keys); if the operator rotated keys, the device needs the key set that names the new key: publish it (`edgefleet keyset publish`), sideload it (`edgefleet-agent keyset`) or carry it in the bundle (`edgefleet pack --keyset`): %w",
			KeyID(s.KeyID), strings.Join(kr.IDs(), ", "), policy.version, ErrUnknownKey)
	}
	return PublicKey{}, fmt.Errorf("the manifest is signed by key %s, which is not among the trusted keys (%s); if the operator rotated keys, install the new public key first: %w",
		KeyID(s.KeyID), strings.Join(kr.IDs(), ", "), ErrUnknownKey)
}

// Sign signs msg with priv in minisign's prehashed format (what `minisign
// -S` writes by default) with the given trusted comment. ed25519 is
// deterministic, so the same inputs give the same signature.
func Sign(priv PrivateKey, msg []byte, trustedComment string) []byte {
	r := minisign.NewReader(bytes.NewReader(msg))
	if _, err := io.Copy(io.Discard, r); err != nil {
		panic(err) // a bytes.Reader does not fail
	}
	return r.SignWithComments(priv, trustedComment, "signature from edgefleet secret key "+KeyID(priv.ID()))
}
