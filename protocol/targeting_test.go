package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func targetingFixture(t testing.TB) (*KeySet, PrivateKey, []byte) {
	b, err := OpenBundle(bytes.NewReader(goodVector(t)), func() *Keyring { p, _, _ := loadVectorKeys(t); return NewKeyring(p) }())
	if err != nil {
		t.Fatal(err)
	}
	aPub, _ := vectorRoot(t, "root-a")
	tPub, tPriv := vectorRoot(t, "targeting")
	ks := baseKeySet(t, 1, aPub)
	ks.Targeting = []ScopedKey{{Key: PublicKeyLine(tPub), Channels: []string{"stable", "canary"}}}
	return ks, tPriv, b.RawManifest
}

func TestCheckTargeting(t *testing.T) {
	ks, tPriv, raw := targetingFixture(t)
	issued := ts("2026-05-01T00:00:00Z")
	sign := func(tg Targeting) *SignedTargeting {
		tg.Issued, tg.Expires = issued, issued.Add(60*24*time.Hour)
		st, err := SignTargeting(tPriv, raw, tg)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	stable := sign(Targeting{Channel: "stable"})
	if _, err := CheckTargeting(ks, stable, raw, TargetingTo{Channel: "stable"}, keysetNow); err != nil {
		t.Fatalf("targeted at stable: %v", err)
	}
	for name, c := range map[string]struct {
		st  *SignedTargeting
		raw []byte
		to  TargetingTo
		now time.Time
		err error
	}{
		"other channel":      {stable, raw, TargetingTo{Channel: "beta"}, keysetNow, ErrNotTargeted},
		"device topic":       {stable, raw, TargetingTo{Device: "pi-1"}, keysetNow, ErrNotTargeted},
		"no targeting":       {nil, raw, TargetingTo{Channel: "stable"}, keysetNow, ErrNotTargeted},
		"mix and match":      {stable, append([]byte(nil), append(raw[:len(raw)-1:len(raw)-1], ' ')...), TargetingTo{Channel: "stable"}, keysetNow, ErrNotTargeted},
		"expired":            {stable, raw, TargetingTo{Channel: "stable"}, issued.Add(61 * 24 * time.Hour), ErrExpired},
		"out of key's scope": {sign(Targeting{Channel: "beta"}), raw, TargetingTo{Channel: "beta"}, keysetNow, ErrNotTargeted},
		"tampered":           {&SignedTargeting{Doc: bytes.Replace(stable.Doc, []byte(`"stable"`), []byte(`"canary"`), 1), Signature: stable.Signature}, raw, TargetingTo{Channel: "canary"}, keysetNow, ErrBadSignature},
	} {
		if _, err := CheckTargeting(ks, c.st, c.raw, c.to, c.now); !errors.Is(err, c.err) {
			t.Errorf("%s: want %v, got %v", name, c.err, err)
		}
	}
	// A release key cannot target: only keys the key set delegates.
	_, relPriv, _ := loadVectorKeys(t)
	bySelf, _ := SignTargeting(relPriv, raw, Targeting{Channel: "stable", Issued: issued, Expires: issued.Add(time.Hour * 24 * 60)})
	if _, err := CheckTargeting(ks, bySelf, raw, TargetingTo{Channel: "stable"}, keysetNow); !errors.Is(err, ErrNotTargeted) {
		t.Errorf("targeting signed by the release key: want ErrNotTargeted, got %v", err)
	}
	// Without targeting keys in the key set, nothing is required.
	ks.Targeting = nil
	if tg, err := CheckTargeting(ks, nil, raw, TargetingTo{Channel: "x"}, keysetNow); tg != nil || err != nil {
		t.Fatalf("no targeting keys: %v %v", tg, err)
	}
	if *update {
		dir := filepath.Join("testdata/fuzz", "FuzzParseTargeting")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "stable"), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", stable.Doc)), 0o644)
		os.WriteFile(filepath.Join(keysetDir, "targeting-stable.json"), stable.Doc, 0o644)
	}
	if b, err := os.ReadFile(filepath.Join(keysetDir, "targeting-stable.json")); err != nil || !bytes.Equal(b, stable.Doc) {
		t.Fatalf("vector targeting-stable.json differs from what the code signs (%v); regenerate with -update", err)
	}
}

func FuzzParseTargeting(f *testing.F) {
	f.Add([]byte(`{"schema":1,"type":"targeting","app":"hello","version":"1.0.0","sequence":1,"manifest_sha256":"` + string(bytes.Repeat([]byte("a"), 64)) + `","channel":"stable","issued":"2026-01-01T00:00:00Z","expires":"2026-02-01T00:00:00Z"}`))
	f.Add([]byte(`{"schema":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tg, err := ParseTargeting(b)
		if err != nil {
			return
		}
		if (tg.Channel == "") == (tg.Device == "") || !tg.Expires.After(tg.Issued) {
			t.Fatalf("accepted an invalid targeting: %+v", tg)
		}
	})
}
