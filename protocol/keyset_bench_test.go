package protocol

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// Costs per install of the extra signatures (docs/BENCHMARKS.md, issue 11):
// BenchmarkVerifyManifestPlain is the baseline (one release signature,
// a plain keyring); ...PolicyKeyring adds the key set's revocation, scope
// and validity checks; BenchmarkCheckTargeting is the targeting signature
// and checks; BenchmarkKeySetAdvance one key set verified from a root.

func benchManifest(b *testing.B) (raw, sig []byte) {
	bundle, err := OpenBundle(bytes.NewReader(goodVector(b)), func() *Keyring { p, _, _ := loadVectorKeys(b); return NewKeyring(p) }())
	if err != nil {
		b.Fatal(err)
	}
	return bundle.RawManifest, bundle.RawSignature
}

func BenchmarkVerifyManifestPlain(b *testing.B) {
	raw, sig := benchManifest(b)
	pub, _, _ := loadVectorKeys(b)
	kr := NewKeyring(pub)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := kr.VerifyManifest(raw, sig); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyManifestPolicyKeyring(b *testing.B) {
	raw, sig := benchManifest(b)
	aPub, _ := vectorRoot(b, "root-a")
	ks := baseKeySet(b, 1, aPub)
	ks.Release[0].Apps = []string{"hello", "vector"}
	for i := 0; i < 100; i++ {
		ks.Revoked = append(ks.Revoked, KeyID16(uint64(i+1)))
	}
	kr := PolicyKeyring(ks, nil, func() time.Time { return keysetNow })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := kr.VerifyManifest(raw, sig); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCheckTargeting(b *testing.B) {
	ks, tPriv, raw := targetingFixture(b)
	issued := ts("2026-05-01T00:00:00Z")
	st, err := SignTargeting(tPriv, raw, Targeting{Channel: "stable", Issued: issued, Expires: issued.Add(60 * 24 * time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := CheckTargeting(ks, st, raw, TargetingTo{Channel: "stable"}, keysetNow); err != nil {
			b.Fatal(err)
		}
	}
	wire, _ := json.Marshal(st)
	b.ReportMetric(float64(len(wire)), "envelope-bytes")
}

func BenchmarkKeySetAdvance(b *testing.B) {
	aPub, aPriv := vectorRoot(b, "root-a")
	bPub, bPriv := vectorRoot(b, "root-b")
	ks := baseKeySet(b, 2, aPub, bPub)
	ks.Root.Threshold = 2
	msg := chainBytes(b, signed(b, ks, aPriv, bPriv))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, docs, err := ParseKeySetChain(msg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := (TrustState{Roots: []PublicKey{aPub, bPub}, Threshold: 2}).Advance(c, docs, keysetNow); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(msg)), "message-bytes")
}

// BenchmarkOpenBundleKeySet is the cost of a key set inside a bundle
// (SPEC.md §2): opening the manifest of the same bundle without the entry
// (baseline), and with a chain of one key set signed by 1 root or by 2
// roots (threshold 2) that the device verifies (TrustState.Advance) before
// the manifest. overhead-bytes is what the entry adds to the bundle.
func BenchmarkOpenBundleKeySet(b *testing.B) {
	aPub, aPriv := vectorRoot(b, "root-a")
	bPub, bPriv := vectorRoot(b, "root-b")
	pub, _, _ := loadVectorKeys(b)
	base := NewKeyring(pub)
	g, err := OpenBundle(bytes.NewReader(goodVector(b)), base)
	if err != nil {
		b.Fatal(err)
	}
	p, _ := g.Payload()
	var payload bytes.Buffer
	payload.ReadFrom(p)
	write := func(ks []byte) []byte {
		var out bytes.Buffer
		if err := WriteBundleKeySet(&out, ks, g.RawManifest, g.RawSignature, bytes.NewReader(payload.Bytes()), int64(payload.Len()), time.Unix(1700000000, 0)); err != nil {
			b.Fatal(err)
		}
		return out.Bytes()
	}
	plain := write(nil)
	one := baseKeySet(b, 2, aPub)
	one.Release[0].Apps = []string{"vector"}
	two := baseKeySet(b, 2, aPub, bPub)
	two.Root.Threshold = 2
	two.Release[0].Apps = []string{"vector"}
	cases := []struct {
		name  string
		data  []byte
		roots []PublicKey
		th    int
	}{
		{"none", plain, []PublicKey{aPub}, 1},
		{"1-root", write(chainBytes(b, signed(b, one, aPriv))), []PublicKey{aPub}, 1},
		{"2-roots", write(chainBytes(b, signed(b, two, aPriv, bPriv))), []PublicKey{aPub, bPub}, 2},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				st := TrustState{Roots: c.roots, Threshold: c.th}
				ksErr, err := deviceOpenManifest(c.data, base, &st, keysetNow)
				if err != nil || ksErr != nil {
					b.Fatal(err, ksErr)
				}
				if c.name != "none" && st.Version() != 2 {
					b.Fatal("key set not applied")
				}
			}
			b.ReportMetric(float64(len(c.data)-len(plain)), "overhead-bytes")
		})
	}
}

// deviceOpenManifest is deviceOpen without reading the payload: base
// verifies when there is no key set entry.
func deviceOpenManifest(data []byte, base *Keyring, st *TrustState, now time.Time) (ksErr, err error) {
	clock := func() time.Time { return now }
	_, err = OpenBundleWith(bytes.NewReader(data), OpenOptions{
		Keyring: base,
		KeySet: func(raw []byte) *Keyring {
			ksErr = advanceFromBundle(st, raw, now)
			return PolicyKeyring(st.Held, nil, clock)
		},
	})
	return ksErr, err
}
