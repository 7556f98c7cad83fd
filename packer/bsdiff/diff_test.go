package bsdiff

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand"
	"testing"

	"github.com/minio/selfupdate"

	applier "github.com/edgefleet/edgefleet/protocol/bsdiff"
)

// mutate returns a copy of b with a few insertions, deletions and edits,
// like a small code change moves and patches a binary.
func mutate(r *rand.Rand, b []byte, edits int) []byte {
	out := append([]byte(nil), b...)
	for range edits {
		if len(out) == 0 {
			out = append(out, byte(r.Intn(256)))
			continue
		}
		at := r.Intn(len(out))
		switch r.Intn(3) {
		case 0:
			ins := make([]byte, r.Intn(300))
			r.Read(ins)
			out = append(out[:at], append(ins, out[at:]...)...)
		case 1:
			n := min(r.Intn(300), len(out)-at)
			out = append(out[:at], out[at+n:]...)
		default:
			for i := at; i < min(at+40, len(out)); i++ {
				out[i] ^= byte(r.Intn(4))
			}
		}
	}
	return out
}

// checkRoundTrip diffs old→new and applies the patch with minio/selfupdate's
// patcher (the reference) and with the streaming applier: both must give
// new, byte for byte.
func checkRoundTrip(t *testing.T, old, nw []byte) []byte {
	t.Helper()
	patch, st, err := Diff(old, nw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ref bytes.Buffer
	if err := selfupdate.NewBSDiffPatcher().Patch(bytes.NewReader(old), &ref, bytes.NewReader(patch)); err != nil {
		t.Fatalf("minio/selfupdate refuses our patch: %v", err)
	}
	if !bytes.Equal(ref.Bytes(), nw) {
		t.Fatalf("minio/selfupdate's result differs from new (%d vs %d bytes)", ref.Len(), len(nw))
	}
	var got bytes.Buffer
	res, err := applier.Apply(context.Background(), bytes.NewReader(old), int64(len(old)), bytes.NewReader(patch), int64(len(patch)), &got, int64(len(nw)), applier.Options{})
	if err != nil {
		t.Fatalf("streaming applier: %v", err)
	}
	if !bytes.Equal(got.Bytes(), nw) || res.SHA256 != sha256.Sum256(nw) || res.Size != int64(len(nw)) {
		t.Fatalf("streaming applier's result differs from new")
	}
	if res.ControlEntries != st.ControlEntries {
		t.Fatalf("applier read %d control entries, differ wrote %d", res.ControlEntries, st.ControlEntries)
	}
	return patch
}

func TestDiffRoundTrip(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	base := make([]byte, 300_000)
	for i := range base {
		base[i] = byte(r.Intn(16)) // compressible, repetitive like code
	}
	cases := map[string][2][]byte{
		"empty to empty": {nil, nil},
		"empty to data":  {nil, base[:1000]},
		"data to empty":  {base[:1000], nil},
		"identical":      {base, base},
		"small change":   {base, mutate(r, base, 3)},
		"many changes":   {base, mutate(r, base, 200)},
		"unrelated":      {base[:5000], mutate(r, base[100_000:105_000], 500)},
		"one byte":       {[]byte{1}, []byte{2}},
		"grows a lot":    {base[:10_000], append(append([]byte(nil), base[:10_000]...), base...)},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			patch := checkRoundTrip(t, c[0], c[1])
			t.Logf("%d → %d bytes: patch %d bytes", len(c[0]), len(c[1]), len(patch))
		})
	}
}

func TestDiffSmallChangeIsSmall(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	base := make([]byte, 1_000_000)
	r.Read(base) // incompressible: only a real delta is small
	patch := checkRoundTrip(t, base, mutate(r, base, 5))
	if len(patch) > 20_000 {
		t.Fatalf("patch of 5 small edits to 1 MB of random data is %d bytes; expected a few KB", len(patch))
	}
}

func TestDiffDeterministic(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	base := make([]byte, 50_000)
	r.Read(base)
	nw := mutate(r, base, 20)
	a, _, err := Diff(base, nw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := Diff(base, nw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two diffs of the same inputs differ")
	}
}
