package protocol

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bundles carrying a key set (SPEC.md §2, §8.12): the vectors in
// testdata/vectors/keyset/bundle-*.efb, listed in bundles.json, are judged
// by a device that holds root a (threshold 1), no key set, and the vector
// release key TEST-ONLY-trusted in its trusted_keys, at keysetNow.

type bundleKeySetVector struct {
	File string `json:"file"`
	// Expect is "ok" or the sentinel the open (or payload) must fail with.
	Expect string `json:"expect"`
	// KeySet is the key set version the device holds afterwards.
	KeySet uint64 `json:"keyset"`
	// KeySetError names the sentinel the key set was ignored for ("": it
	// was applied, or there was none).
	KeySetError string `json:"keyset_error,omitempty"`
	Description string `json:"description"`
}

const bundleKeySetIndex = "bundles.json"

// deviceOpen opens a bundle as a device does: the key set entry, when
// there is one, is applied through TrustState.Advance (a failure is kept
// and ignored), then the manifest verifies with the resulting keyring.
func deviceOpen(data []byte, st *TrustState, extra []PublicKey, now time.Time) (ksErr error, err error) {
	clock := func() time.Time { return now }
	b, err := OpenBundleWith(bytes.NewReader(data), OpenOptions{
		Keyring: PolicyKeyring(st.Held, extra, clock),
		KeySet: func(raw []byte) *Keyring {
			ksErr = advanceFromBundle(st, raw, now)
			return PolicyKeyring(st.Held, extra, clock)
		},
	})
	if err != nil {
		return ksErr, err
	}
	exe, err := b.Executable()
	if err != nil {
		return ksErr, err
	}
	_, err = bytes.NewBuffer(nil).ReadFrom(exe)
	return ksErr, err
}

// makeBundleKeySetVectors builds every bundle-with-key-set vector.
func makeBundleKeySetVectors(t testing.TB) (map[string][]byte, []bundleKeySetVector) {
	aPub, aPriv := vectorRoot(t, "root-a")
	_, bPriv := vectorRoot(t, "root-b")
	trusted, trustedPriv, otherPriv := loadVectorKeys(t)
	other := otherPriv.Public().(PublicKey)
	exe := vectorExecutable()
	xzp := xzBytes(t, exe)
	m := vectorManifest(t, exe, xzp, EncodingXZ)
	rawT, sigT, err := SignManifest(m, trustedPriv)
	if err != nil {
		t.Fatal(err)
	}
	rawO, sigO, err := SignManifest(m, otherPriv)
	if err != nil {
		t.Fatal(err)
	}
	withKS := func(ks, raw, sig []byte) []byte {
		var buf bytes.Buffer
		if err := WriteBundleKeySet(&buf, ks, raw, sig, bytes.NewReader(xzp), int64(len(xzp)), time.Unix(1700000000, 0)); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	// Version 2 hands release to TEST-ONLY-other (app "vector" only).
	v2 := &KeySet{Version: 2, Issued: ts("2026-01-01T00:00:00Z"), Expires: ts("2027-01-01T00:00:00Z"),
		Root:    RootKeys{Threshold: 1, Keys: []string{PublicKeyLine(aPub)}},
		Release: []ReleaseKey{{Key: PublicKeyLine(other), Apps: []string{"vector"}}}}
	good := chainBytes(t, signed(t, v2, aPriv))
	notRoot := chainBytes(t, signed(t, v2, bPriv))
	revoking := *v2
	revoking.Revoked = []string{KeyID16(trusted.ID())}
	revokes := chainBytes(t, signed(t, &revoking, aPriv))

	files := map[string][]byte{}
	var vs []bundleKeySetVector
	add := func(name, expect string, held uint64, ksErr, desc string, b []byte) {
		files[name] = b
		vs = append(vs, bundleKeySetVector{File: name, Expect: expect, KeySet: held, KeySetError: ksErr, Description: desc})
	}
	add("bundle-rotated-key.efb", "ok", 2, "", "key set version 2 (signed by root a) first, then a manifest signed by TEST-ONLY-other, the release key version 2 introduces: the device advances, then verifies", withKS(good, rawO, sigO))
	add("bundle-not-root.efb", "ErrUnknownKey", 0, "ErrThreshold", "the same key set signed by root b, which the device does not trust: ignored, so TEST-ONLY-other stays unknown", withKS(notRoot, rawO, sigO))
	add("bundle-not-root-held-signer.efb", "ok", 0, "ErrThreshold", "a key set signed by root b is ignored; the manifest is signed by TEST-ONLY-trusted, which the device holds: it installs", withKS(notRoot, rawT, sigT))
	add("bundle-revokes-signer.efb", "ErrRevokedKey", 2, "", "key set version 2 revokes TEST-ONLY-trusted, which signed the manifest: the key set is applied, the release refused", withKS(revokes, rawT, sigT))

	// A chain message that does not parse (no key set in it), written
	// around WriteBundleKeySet, which refuses it.
	garbage := tarOf(tarEntry{NameKeySet, []byte(`{"schema":1,"keysets":[]}`)}, tarEntry{NameManifest, rawT}, tarEntry{NameSignature, sigT}, tarEntry{NamePayload, xzp})
	add("bundle-malformed-keyset.efb", "ok", 0, "ErrMalformed", "keyset.json holds a chain with no key set: ignored; the manifest signed by TEST-ONLY-trusted installs", garbage)

	late := tarOf(tarEntry{NameManifest, rawT}, tarEntry{NameSignature, sigT}, tarEntry{NameKeySet, good}, tarEntry{NamePayload, xzp})
	add("bundle-keyset-not-first.efb", "ErrMalformed", 0, "", "keyset.json after the signature: only the first entry may be a key set", late)

	var big bytes.Buffer
	tw := tar.NewWriter(&big)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: NameKeySet, Mode: 0o644, Size: MaxKeySetMessage + 1, ModTime: time.Unix(1700000000, 0), Format: tar.FormatUSTAR})
	tw.Flush()
	add("bundle-keyset-too-large.efb", "ErrTooLarge", 0, "", "keyset.json declares 256 KiB + 1 bytes (the archive ends after the header): refused before allocating", big.Bytes())
	return files, vs
}

func TestBundleKeySetVectors(t *testing.T) {
	if *update {
		files, vs := makeBundleKeySetVectors(t)
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(keysetDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join("testdata/fuzz", "FuzzOpenBundle")
			os.MkdirAll(dir, 0o755)
			os.WriteFile(filepath.Join(dir, strings.TrimSuffix(name, ".efb")), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)), 0o644)
		}
		idx, _ := json.MarshalIndent(vs, "", "  ")
		if err := os.WriteFile(filepath.Join(keysetDir, bundleKeySetIndex), append(idx, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := os.ReadFile(filepath.Join(keysetDir, bundleKeySetIndex))
	if err != nil {
		t.Fatal(err)
	}
	var vs []bundleKeySetVector
	if err := json.Unmarshal(idx, &vs); err != nil {
		t.Fatal(err)
	}
	files, want := makeBundleKeySetVectors(t)
	if len(vs) != len(want) {
		t.Fatalf("%s lists %d vectors, the generator %d: run go test ./protocol -run TestBundleKeySetVectors -update", bundleKeySetIndex, len(vs), len(want))
	}
	aPub, _ := vectorRoot(t, "root-a")
	trusted, _, _ := loadVectorKeys(t)
	names := keysetErrorNames()
	names["ErrRevokedKey"] = ErrRevokedKey
	for _, v := range vs {
		t.Run(v.File, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(keysetDir, v.File))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, files[v.File]) {
				t.Fatalf("%s differs from what the generator makes: the format changed; regenerate with -update", v.File)
			}
			st := TrustState{Roots: []PublicKey{aPub}, Threshold: 1}
			ksErr, err := deviceOpen(data, &st, []PublicKey{trusted}, keysetNow)
			if v.Expect == "ok" {
				if err != nil {
					t.Fatalf("%s: %v", v.Description, err)
				}
			} else if !errors.Is(err, names[v.Expect]) {
				t.Fatalf("%s: want %s, got %v", v.Description, v.Expect, err)
			}
			if st.Version() != v.KeySet {
				t.Fatalf("%s: the device holds key set %d, want %d", v.Description, st.Version(), v.KeySet)
			}
			if v.KeySetError == "" && ksErr != nil {
				t.Fatalf("%s: key set ignored: %v", v.Description, ksErr)
			}
			if v.KeySetError != "" && !errors.Is(ksErr, names[v.KeySetError]) {
				t.Fatalf("%s: key set error %v, want %s", v.Description, ksErr, v.KeySetError)
			}
		})
	}
}

// A reader that does not apply key sets (OpenBundle) reads a bundle that
// carries one as it reads one without: the entry is kept, unverified.
func TestOpenBundleKeepsKeySetUnapplied(t *testing.T) {
	files, _ := makeBundleKeySetVectors(t)
	_, _, otherPriv := loadVectorKeys(t)
	other := otherPriv.Public().(PublicKey)
	b, err := OpenBundle(bytes.NewReader(files["bundle-rotated-key.efb"]), NewKeyring(other))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ParseKeySetChain(b.RawKeySet); err != nil {
		t.Fatalf("RawKeySet: %v", err)
	}
	if _, err := readAllExecutable(b); err != nil {
		t.Fatal(err)
	}
	trusted, _, _ := loadVectorKeys(t)
	if _, err := OpenBundle(bytes.NewReader(files["bundle-rotated-key.efb"]), NewKeyring(trusted)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("without applying the key set: want ErrUnknownKey, got %v", err)
	}
	g, err := OpenBundle(bytes.NewReader(goodVector(t)), NewKeyring(trusted))
	if err != nil || g.RawKeySet != nil {
		t.Fatalf("a bundle without keyset.json: RawKeySet %q, err %v", g.RawKeySet, err)
	}
}

func readAllExecutable(b *Bundle) (int64, error) {
	exe, err := b.Executable()
	if err != nil {
		return 0, err
	}
	return bytes.NewBuffer(nil).ReadFrom(exe)
}

// Without a key set the writer's output is byte for byte what it was
// before keyset.json existed (reproducible bundles), and a key set that
// does not parse is refused by the writer.
func TestWriteBundleKeySet(t *testing.T) {
	trusted, _, _ := loadVectorKeys(t)
	g, err := OpenBundle(bytes.NewReader(goodVector(t)), NewKeyring(trusted))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := g.Payload()
	var payload bytes.Buffer
	payload.ReadFrom(p)
	var out bytes.Buffer
	if err := WriteBundleKeySet(&out, nil, g.RawManifest, g.RawSignature, bytes.NewReader(payload.Bytes()), int64(payload.Len()), time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), goodVector(t)) {
		t.Fatal("a bundle written without a key set differs from good-xz.efb")
	}
	err = WriteBundleKeySet(&out, []byte(`{"schema":1,"keysets":[]}`), g.RawManifest, g.RawSignature, bytes.NewReader(payload.Bytes()), int64(payload.Len()), time.Unix(1700000000, 0))
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), NameKeySet) {
		t.Fatalf("a chain with no key set: want ErrMalformed naming %s, got %v", NameKeySet, err)
	}
}

// advanceFromBundle is what a device does with a bundle's keyset.json in
// these tests: parse the chain and, when it verifies, hold the new state.
func advanceFromBundle(st *TrustState, raw []byte, now time.Time) error {
	c, docs, err := ParseKeySetChain(raw)
	if err != nil {
		return err
	}
	ns, err := st.Advance(c, docs, now)
	if err == nil {
		*st = ns
	}
	return err
}

type tarEntry struct {
	name string
	data []byte
}

// tarOf is a bundle-shaped tar of entries in order, written around
// WriteBundle and WriteBundleKeySet (which refuse such bundles).
func tarOf(entries ...tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: time.Unix(1700000000, 0), Format: tar.FormatUSTAR})
		tw.Write(e.data)
	}
	tw.Close()
	return buf.Bytes()
}
