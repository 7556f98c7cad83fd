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
