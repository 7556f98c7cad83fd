package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
)

const keysetDir = "testdata/vectors/keyset"

// keysetNow is the trusted time every key set vector is evaluated at.
var keysetNow = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// detReader is a deterministic byte stream (SHA-256 in counter mode) so
// that the vector keys, hence the vectors, never change.
type detReader struct {
	seed string
	n    int
	buf  []byte
}

func (r *detReader) Read(p []byte) (int, error) {
	for len(r.buf) < len(p) {
		s := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", r.seed, r.n)))
		r.n++
		r.buf = append(r.buf, s[:]...)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// vectorRoot returns the deterministic TEST-ONLY key named name.
func vectorRoot(t testing.TB, name string) (PublicKey, PrivateKey) {
	pub, priv, err := minisign.GenerateKey(&detReader{seed: "edgefleet TEST-ONLY " + name})
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

type keysetVector struct {
	File        string `json:"file"`
	Expect      string `json:"expect"` // "ok" or a sentinel name
	Version     uint64 `json:"version,omitempty"`
	Description string `json:"description"`
}

func keysetErrorNames() map[string]error {
	m := map[string]error{"ErrThreshold": ErrThreshold, "ErrRollback": ErrRollback}
	for k, v := range errorNames {
		m[k] = v
	}
	return m
}

func ts(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// baseKeySet is version v with root a (threshold 1) and the vector release
// key allowed for app "hello".
func baseKeySet(t testing.TB, v uint64, roots ...PublicKey) *KeySet {
	rel, _, _ := loadVectorKeys(t)
	ks := &KeySet{Version: v, Issued: ts("2026-01-01T00:00:00Z"), Expires: ts("2027-01-01T00:00:00Z"),
		Root:    RootKeys{Threshold: 1},
		Release: []ReleaseKey{{Key: PublicKeyLine(rel), Apps: []string{"hello"}}}}
	for _, r := range roots {
		ks.Root.Keys = append(ks.Root.Keys, PublicKeyLine(r))
	}
	return ks
}

func signed(t testing.TB, ks *KeySet, signers ...PrivateKey) SignedKeySet {
	raw, err := MarshalKeySet(ks)
	if err != nil {
		t.Fatal(err)
	}
	s := SignedKeySet{KeySet: raw}
	for _, p := range signers {
		sig, err := SignKeySet(p, raw)
		if err != nil {
			t.Fatal(err)
		}
		s.Signatures = append(s.Signatures, string(sig))
	}
	return s
}

func chainBytes(t testing.TB, sets ...SignedKeySet) []byte {
	b, err := json.Marshal(KeySetChain{Schema: 1, KeySets: sets})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// makeKeysetVectors builds every key set vector (deterministic).
func makeKeysetVectors(t testing.TB) (map[string][]byte, []keysetVector) {
	aPub, aPriv := vectorRoot(t, "root-a")
	bPub, bPriv := vectorRoot(t, "root-b")
	files := map[string][]byte{}
	var vs []keysetVector
	add := func(name, expect string, v uint64, desc string, b []byte) {
		files[name] = b
		vs = append(vs, keysetVector{File: name, Expect: expect, Version: v, Description: desc})
	}
	v1 := signed(t, baseKeySet(t, 1, aPub), aPriv)
	add("v1.json", "ok", 1, "version 1 signed by root a (threshold 1)", chainBytes(t, v1))

	rot := baseKeySet(t, 2, bPub)
	add("rotate-v2.json", "ok", 2, "v1 then v2, which hands the root to b, signed by a and b", chainBytes(t, v1, signed(t, rot, aPriv, bPriv)))
	add("rotate-v2-new-only.json", "ErrThreshold", 0, "v2 hands the root to b but only b signed it", chainBytes(t, v1, signed(t, rot, bPriv)))
	add("rotate-v2-old-only.json", "ErrThreshold", 0, "v2 hands the root to b but only a signed it (b never agreed)", chainBytes(t, v1, signed(t, rot, aPriv)))
	v3 := baseKeySet(t, 3, bPub)
	add("rotate-walk-v3.json", "ok", 3, "v1, v2 (rotation to b), v3 signed by b: a device holding only root a walks the chain", chainBytes(t, v1, signed(t, rot, aPriv, bPriv), signed(t, v3, bPriv)))
	add("skip-rotation-v3.json", "ErrThreshold", 0, "v3 signed by b without the rotation v2 in the chain", chainBytes(t, v1, signed(t, v3, bPriv)))

	two := baseKeySet(t, 4, aPub, bPub)
	two.Root.Threshold = 2
	// Root a alone cannot introduce a 2-of-2 root: b must sign too.
	add("threshold-2.json", "ok", 4, "v4 with roots a and b, threshold 2, signed by both", chainBytes(t, v1, signed(t, two, aPriv, bPriv)))
	five := baseKeySet(t, 5, aPub, bPub)
	five.Root.Threshold = 2
	dupSig := signed(t, five, aPriv)
	dupSig.Signatures = append(dupSig.Signatures, dupSig.Signatures[0])
	add("threshold-2-same-signer-twice.json", "ErrThreshold", 0, "after v4 (2 of a, b) v5 carries root a's signature twice: one signer counts once",
		chainBytes(t, v1, signed(t, two, aPriv, bPriv), dupSig))

	exp := baseKeySet(t, 1, aPub)
	exp.Expires = ts("2026-02-01T00:00:00Z")
	add("expired.json", "ErrExpired", 0, "version 1 expired on 2026-02-01", chainBytes(t, signed(t, exp, aPriv)))

	tampered := signed(t, baseKeySet(t, 1, aPub), aPriv)
	tampered.KeySet = bytes.Replace(tampered.KeySet, []byte(`"hello"`), []byte(`"hellx"`), 1)
	add("tampered.json", "ErrThreshold", 0, "version 1 with one byte changed after signing", chainBytes(t, tampered))

	relPub, _, _ := loadVectorKeys(t)
	dupKey := baseKeySet(t, 1, aPub)
	dupKey.Schema, dupKey.Type = 1, "keyset"
	dupKey.Release = append(dupKey.Release, ReleaseKey{Key: PublicKeyLine(aPub)})
	raw, _ := json.Marshal(dupKey)
	add("root-as-release-key.json", "ErrMalformed", 0, "root a is also listed as a release key", chainBytes(t, SignedKeySet{KeySet: raw, Signatures: []string{string(Sign(aPriv, raw, "x"))}}))

	revokedListed := baseKeySet(t, 1, aPub)
	revokedListed.Schema, revokedListed.Type = 1, "keyset"
	revokedListed.Revoked = []string{KeyID16(relPub.ID())}
	raw, _ = json.Marshal(revokedListed)
	add("revoked-and-trusted.json", "ErrMalformed", 0, "the release key is also listed as revoked", chainBytes(t, SignedKeySet{KeySet: raw, Signatures: []string{string(Sign(aPriv, raw, "x"))}}))

	dupField := signed(t, baseKeySet(t, 1, aPub), aPriv)
	dupField.KeySet = bytes.Replace(dupField.KeySet, []byte(`"version": 1,`), []byte(`"version": 1, "Version": 9,`), 1)
	dupField.Signatures = []string{string(Sign(aPriv, dupField.KeySet, "x"))}
	add("case-variant-key.json", "ErrMalformed", 0, "validly signed key set with \"version\": 1 and \"Version\": 9 (strict JSON)", chainBytes(t, dupField))

	add("unknown-schema.json", "ErrSchema", 0, "chain message of schema 2", []byte(`{"schema":2,"keysets":[]}`))
	add("not-increasing.json", "ErrMalformed", 0, "v1 after v1", chainBytes(t, v1, v1))
	return files, vs
}

// TestKeySetVectors runs every vector from a device that holds root a
// (threshold 1) and no key set, at keysetNow.
func TestKeySetVectors(t *testing.T) {
	if *update {
		files, vs := makeKeysetVectors(t)
		if err := os.MkdirAll(keysetDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(keysetDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		idx, _ := json.MarshalIndent(vs, "", "  ")
		if err := os.WriteFile(filepath.Join(keysetDir, "vectors.json"), append(idx, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"root-a", "root-b"} {
			pub, priv := vectorRoot(t, n)
			pt, _ := pub.MarshalText()
			kt, _ := priv.MarshalText()
			os.WriteFile(filepath.Join(keysetDir, "TEST-ONLY-"+n+".pub"), append(pt, '\n'), 0o644)
			os.WriteFile(filepath.Join(keysetDir, "TEST-ONLY-"+n+".key"), append(kt, '\n'), 0o600)
		}
		// Fuzz seed corpora from the vectors.
		for _, fz := range []string{"FuzzParseKeySetChain", "FuzzParseKeySet"} {
			dir := filepath.Join("testdata/fuzz", fz)
			os.MkdirAll(dir, 0o755)
			for name, b := range files {
				if fz == "FuzzParseKeySet" {
					_, docs, err := ParseKeySetChain(b)
					if err != nil || len(docs) == 0 {
						continue
					}
					var c KeySetChain
					json.Unmarshal(b, &c)
					b = c.KeySets[0].KeySet
				}
				os.WriteFile(filepath.Join(dir, strings.TrimSuffix(name, ".json")), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)), 0o644)
			}
		}
	}
	idx, err := os.ReadFile(filepath.Join(keysetDir, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []keysetVector
	if err := json.Unmarshal(idx, &vs); err != nil {
		t.Fatal(err)
	}
	files, want := makeKeysetVectors(t)
	if len(want) != len(vs) {
		t.Fatalf("vectors.json lists %d vectors, the generator %d: run go test ./protocol -run TestKeySetVectors -update", len(vs), len(want))
	}
	aPub, _ := vectorRoot(t, "root-a")
	names := keysetErrorNames()
	for _, v := range vs {
		t.Run(v.File, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(keysetDir, v.File))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, files[v.File]) {
				t.Fatalf("%s differs from what the generator makes: the format changed; regenerate with -update", v.File)
			}
			c, docs, err := ParseKeySetChain(b)
			var st TrustState
			if err == nil {
				st, err = TrustState{Roots: []PublicKey{aPub}, Threshold: 1}.Advance(c, docs, keysetNow)
			}
			if v.Expect == "ok" {
				if err != nil {
					t.Fatalf("want ok, got %v", err)
				}
				if st.Version() != v.Version {
					t.Fatalf("holds version %d, want %d", st.Version(), v.Version)
				}
				return
			}
			if !errors.Is(err, names[v.Expect]) {
				t.Fatalf("want %s, got %v", v.Expect, err)
			}
			if st.Version() != 0 {
				t.Fatalf("a refused chain left the device at version %d", st.Version())
			}
		})
	}
}

func TestKeySetReplayRefused(t *testing.T) {
	aPub, aPriv := vectorRoot(t, "root-a")
	st := TrustState{Roots: []PublicKey{aPub}, Threshold: 1}
	v2 := chainBytes(t, signed(t, baseKeySet(t, 2, aPub), aPriv))
	c, docs, err := ParseKeySetChain(v2)
	if err != nil {
		t.Fatal(err)
	}
	if st, err = st.Advance(c, docs, keysetNow); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{1, 2} {
		c, docs, _ := ParseKeySetChain(chainBytes(t, signed(t, baseKeySet(t, v, aPub), aPriv)))
		if _, err := st.Advance(c, docs, keysetNow); !errors.Is(err, ErrRollback) {
			t.Fatalf("version %d after 2: want ErrRollback, got %v", v, err)
		}
	}
}

// The key set policy on a keyring: scope, revocation (also of a
// trusted_keys key), validity, and the key set's own expiry.
func TestPolicyKeyring(t *testing.T) {
	rel, _, _ := loadVectorKeys(t)
	aPub, _ := vectorRoot(t, "root-a")
	bundle := goodVector(t)
	now := keysetNow
	clock := func() time.Time { return now }
	open := func(ks *KeySet, extra ...PublicKey) error {
		_, err := OpenBundle(bytes.NewReader(bundle), PolicyKeyring(ks, extra, clock))
		return err
	}
	ks := baseKeySet(t, 1, aPub)
	ks.Release[0].Apps = nil
	if err := open(ks); err != nil {
		t.Fatalf("unscoped release key: %v", err)
	}
	ks.Release[0].Apps = []string{"other"}
	if err := open(ks); !errors.Is(err, ErrKeyScope) {
		t.Fatalf("key scoped to app other: want ErrKeyScope, got %v", err)
	}
	ks.Release[0].Apps, ks.Release[0].Profiles = nil, []string{"linux-armv7"}
	if err := open(ks); !errors.Is(err, ErrKeyScope) {
		t.Fatalf("key scoped to another profile: want ErrKeyScope, got %v", err)
	}
	ks.Release[0].Profiles = nil
	na := ts("2026-03-01T00:00:00Z")
	ks.Release[0].NotAfter = &na
	if err := open(ks); !errors.Is(err, ErrKeyScope) || !strings.Contains(err.Error(), "valid only until") {
		t.Fatalf("key past not_after: want ErrKeyScope, got %v", err)
	}
	revoking := baseKeySet(t, 2, aPub)
	revoking.Release = nil
	revoking.Revoked = []string{KeyID16(rel.ID())}
	if err := open(revoking, rel); !errors.Is(err, ErrRevokedKey) {
		t.Fatalf("revoked trusted_keys key: want ErrRevokedKey, got %v", err)
	}
	now = ts("2027-01-02T00:00:00Z")
	if err := open(baseKeySet(t, 1, aPub)); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired key set: want ErrExpired, got %v", err)
	}
}

// The stock minisign tool verifies a key set signature.
func TestKeySetStockMinisign(t *testing.T) {
	mini, err := exec.LookPath("minisign")
	if err != nil {
		t.Skip("SKIP LOUDLY: the stock minisign tool is not installed (scripts/test.sh installs it); interop untested")
	}
	aPub, aPriv := vectorRoot(t, "root-a")
	s := signed(t, baseKeySet(t, 1, aPub), aPriv)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "keyset.json"), s.KeySet, 0o644)
	os.WriteFile(filepath.Join(dir, "keyset.json.minisig"), []byte(s.Signatures[0]), 0o644)
	out, err := exec.Command(mini, "-Vm", filepath.Join(dir, "keyset.json"), "-P", PublicKeyLine(aPub)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "edgefleet keyset version:1") {
		t.Fatalf("stock minisign: %v\n%s", err, out)
	}
}

func FuzzParseKeySetChain(f *testing.F) {
	files, _ := makeKeysetVectors(f)
	for _, b := range files {
		f.Add(b)
	}
	aPub, _ := vectorRoot(f, "root-a")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, docs, err := ParseKeySetChain(data)
		if err != nil {
			return
		}
		if len(docs) != len(c.KeySets) {
			t.Fatal("docs and key sets differ in number")
		}
		// Advancing must never panic and never accept a key set not
		// signed by root a.
		st, err := TrustState{Roots: []PublicKey{aPub}, Threshold: 1}.Advance(c, docs, keysetNow)
		if err == nil && st.Held == nil {
			t.Fatal("accepted without holding a key set")
		}
	})
}

func FuzzParseKeySet(f *testing.F) {
	aPub, aPriv := vectorRoot(f, "root-a")
	f.Add(signed(f, baseKeySet(f, 1, aPub), aPriv).KeySet)
	f.Add([]byte(`{"schema":1,"type":"keyset"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := ParseKeySet(data)
		if err != nil {
			return
		}
		var lenient KeySet
		if json.Unmarshal(data, &lenient) != nil || lenient.Version != ks.Version || len(lenient.Revoked) != len(ks.Revoked) {
			t.Fatal("parsed key set reads differently to encoding/json")
		}
		if _, err := MarshalKeySet(ks); err != nil {
			t.Fatalf("a parsed key set does not marshal: %v", err)
		}
		_ = PolicyKeyring(ks, nil, time.Now)
	})
}
