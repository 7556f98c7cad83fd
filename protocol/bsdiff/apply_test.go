package bsdiff_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/selfupdate"

	differ "github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
	"github.com/edgefleet/edgefleet/protocol/bsdiff"
)

var update = flag.Bool("update", false, "rewrite the test vector and the fuzz seed corpus")

// limitWriter records how many bytes the applier wrote: a refused patch
// must never have written past the signed size.
type countWriter struct{ n int64 }

func (w *countWriter) Write(b []byte) (int, error) { w.n += int64(len(b)); return len(b), nil }

func apply(base, patch []byte, want int64, opts bsdiff.Options) (bsdiff.Result, *countWriter, error) {
	w := &countWriter{}
	res, err := bsdiff.Apply(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(patch), int64(len(patch)), w, want, opts)
	return res, w, err
}

func assemble(t testing.TB, ctrl []differ.Control, diff, extra []byte, newSize int64) []byte {
	t.Helper()
	p, err := differ.Assemble(ctrl, diff, extra, newSize, differ.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAssembledPatchApplies(t *testing.T) {
	base := []byte("hello, world")
	// "hello, " + diff on "world" (+1 each byte) + extra "!"
	diff := make([]byte, 12)
	for i := 7; i < 12; i++ {
		diff[i] = 1
	}
	p := assemble(t, []differ.Control{{Add: 12, Copy: 1, Seek: -12}}, diff, []byte("!"), 13)
	var out bytes.Buffer
	if _, err := bsdiff.Apply(context.Background(), bytes.NewReader(base), 12, bytes.NewReader(p), int64(len(p)), &out, 13, bsdiff.Options{}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello, xpsme!" {
		t.Fatalf("got %q", out.String())
	}
}

// Validly made (even validly signed) patches that ask for something the
// applier must not do are refused, with an error that names it, and never
// write past the signed size.
func TestHostilePatches(t *testing.T) {
	base := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1024 bytes
	z := func(n int) []byte { return make([]byte, n) }
	good := assemble(t, []differ.Control{{Add: 1024, Copy: 0, Seek: 0}}, z(1024), nil, 1024)
	if _, _, err := apply(base, good, 1024, bsdiff.Options{}); err != nil {
		t.Fatalf("the good patch of this table is refused: %v", err)
	}
	cases := []struct {
		name  string
		patch []byte
		want  int64
		opts  bsdiff.Options
		is    error
		msg   string
	}{
		{"seek before the base", assemble(t, []differ.Control{{Add: 0, Copy: 0, Seek: -1}, {Add: 10, Copy: 0, Seek: 0}}, z(10), nil, 10), 10, bsdiff.Options{}, protocol.ErrMalformed, "outside the 1024-byte base"},
		{"seek past the base", assemble(t, []differ.Control{{Add: 0, Copy: 0, Seek: 1025}, {Add: 10}}, z(10), nil, 10), 10, bsdiff.Options{}, protocol.ErrMalformed, "outside the 1024-byte base"},
		{"add reads past the base", assemble(t, []differ.Control{{Add: 0, Copy: 0, Seek: 1000}, {Add: 100}}, z(100), nil, 100), 100, bsdiff.Options{}, protocol.ErrMalformed, "outside the 1024-byte base"},
		{"add past the signed size", assemble(t, []differ.Control{{Add: 20}}, z(20), nil, 10), 10, bsdiff.Options{}, protocol.ErrMalformed, "past the signed result size"},
		{"copy past the signed size", assemble(t, []differ.Control{{Add: 5, Copy: 6}}, z(5), z(6), 10), 10, bsdiff.Options{}, protocol.ErrMalformed, "past the signed result size"},
		{"header size differs from the signed size", assemble(t, []differ.Control{{Add: 20}}, z(20), nil, 20), 10, bsdiff.Options{}, protocol.ErrMalformed, "the signed result size is 10"},
		{"huge add", assemble(t, []differ.Control{{Add: 1 << 62}}, z(1), nil, 10), 10, bsdiff.Options{}, protocol.ErrMalformed, "past the signed result size"},
		{"huge negative copy", assemble(t, []differ.Control{{Add: 0, Copy: -(1 << 62)}}, nil, nil, 10), 10, bsdiff.Options{}, protocol.ErrMalformed, "negative length"},
		{"huge seek", assemble(t, []differ.Control{{Add: 1, Seek: 1<<63 - 1}, {Add: 1}}, z(2), nil, 2), 2, bsdiff.Options{}, protocol.ErrMalformed, "outside the 1024-byte base"},
		{"huge negative seek", assemble(t, []differ.Control{{Add: 1, Seek: -(1<<63 - 1)}, {Add: 1}}, z(2), nil, 2), 2, bsdiff.Options{}, protocol.ErrMalformed, "outside the 1024-byte base"},
		{"result size above the limit", assemble(t, nil, nil, nil, 1<<40), 1 << 40, bsdiff.Options{}, protocol.ErrTooLarge, "above the"},
		{"too many control entries", assemble(t, []differ.Control{{}, {}, {}, {Add: 1}}, z(1), nil, 1), 1, bsdiff.Options{MaxControlEntries: 3}, protocol.ErrTooLarge, "more than 3 control entries"},
		{"endless empty entries", assemble(t, make([]differ.Control, 5000), nil, nil, 1), 1, bsdiff.Options{MaxControlEntries: 4096}, protocol.ErrTooLarge, "control entries"},
		{"diff stream too short", assemble(t, []differ.Control{{Add: 10}}, z(5), nil, 10), 10, bsdiff.Options{}, protocol.ErrTruncated, "diff stream ends early"},
		{"extra stream too short", assemble(t, []differ.Control{{Copy: 10}}, nil, z(5), 10), 10, bsdiff.Options{}, protocol.ErrTruncated, "extra stream ends early"},
		{"control stream too short", assemble(t, []differ.Control{{Add: 5}}, z(5), nil, 10), 10, bsdiff.Options{}, protocol.ErrTruncated, "control stream ends early"},
		{"trailing control entries", assemble(t, []differ.Control{{Add: 5}, {}}, z(5), nil, 5), 5, bsdiff.Options{}, protocol.ErrMalformed, "control stream holds data past"},
		{"trailing extra data", assemble(t, []differ.Control{{Add: 5}}, z(5), z(3), 5), 5, bsdiff.Options{}, protocol.ErrMalformed, "extra stream holds data past"},
		{"bzip2 level above the cap", good, 1024, bsdiff.Options{MaxBzip2Level: 4}, nil, ""},
		{"truncated patch", good[:len(good)-10], 1024, bsdiff.Options{}, nil, ""},
		{"header only", good[:32], 1024, bsdiff.Options{}, protocol.ErrTruncated, "the patch holds 0 after its header"},
		{"empty extra stream region", assemble(t, []differ.Control{{Add: 5}}, z(5), nil, 5)[:32+42+42], 5, bsdiff.Options{}, protocol.ErrTruncated, ""},
		{"no header", good[:20], 1024, bsdiff.Options{}, protocol.ErrTruncated, "shorter than its 32-byte header"},
		{"bad magic", append([]byte("BSDIFF41"), good[8:]...), 1024, bsdiff.Options{}, protocol.ErrMalformed, "does not start with"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, w, err := apply(base, c.patch, c.want, c.opts)
			if c.name == "bzip2 level above the cap" {
				// good's data streams are level 5 (the packer's default): a device that allows 4 refuses before decoding.
				if !errors.Is(err, protocol.ErrTooLarge) || !strings.Contains(err.Error(), "declares bzip2 level 5, above the allowed 4") {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("hostile patch applied")
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("err = %v, want %v", err, c.is)
			}
			if c.is == nil && !errors.Is(err, protocol.ErrTruncated) && !errors.Is(err, protocol.ErrMalformed) {
				t.Errorf("err = %v, want ErrTruncated or ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err = %q, want it to say %q", err, c.msg)
			}
			if w.n > c.want {
				t.Errorf("wrote %d bytes, past the signed size %d", w.n, c.want)
			}
		})
	}
}

func TestApplyCancelled(t *testing.T) {
	base := make([]byte, 100)
	p := assemble(t, []differ.Control{{Add: 100}}, make([]byte, 100), nil, 100)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := bsdiff.Apply(ctx, bytes.NewReader(base), 100, bytes.NewReader(p), int64(len(p)), &countWriter{}, 100, bsdiff.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// vectorBase and vectorNew make the SPEC §8.10 test vector: base is 20000
// pseudo-random bytes (seed 1, values 0–15, as the bundle vectors' executable);
// new is base with bytes 5000..5099 replaced by 100 bytes of value 0xAA and
// "edgefleet" appended.
func vectorPair() ([]byte, []byte) {
	r := rand.New(rand.NewSource(1))
	base := make([]byte, 20000)
	for i := range base {
		base[i] = byte(r.Intn(16))
	}
	nw := append([]byte(nil), base...)
	for i := 5000; i < 5100; i++ {
		nw[i] = 0xAA
	}
	nw = append(nw, "edgefleet"...)
	return base, nw
}

type vector struct {
	Base, Patch             string
	BaseSHA256, NewSHA256   string
	NewSize, ControlEntries int64
}

func TestVector(t *testing.T) {
	dir := filepath.Join("testdata", "vector")
	base, nw := vectorPair()
	if *update {
		patch, _, err := differ.Diff(base, nw, differ.Options{})
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "base.bin"), base, 0o644)
		os.WriteFile(filepath.Join(dir, "patch.bsdiff"), patch, 0o644)
	}
	gotBase, err := os.ReadFile(filepath.Join(dir, "base.bin"))
	if err != nil {
		t.Fatal(err)
	}
	patch, err := os.ReadFile(filepath.Join(dir, "patch.bsdiff"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotBase, base) {
		t.Fatal("testdata/vector/base.bin is not the documented base")
	}
	// The values SPEC.md §8.10 documents.
	const (
		wantBase  = "848af0334771e3f8d86b0866c09a4eef4ef4098406caa54eb5d66f0434b269b8"
		wantPatch = "c0f63573428baa54c9663d1b3539b5ff7bf074b27f302559b8e2b24ef7782783"
		wantNew   = "27a1e2b58f70b4ec81b8682f67d5d2a90e1d93fe9f17223f1faa6f2471998621"
	)
	sum := sha256.Sum256(nw)
	if ps, bs := sha256.Sum256(patch), sha256.Sum256(base); hex.EncodeToString(ps[:]) != wantPatch || hex.EncodeToString(bs[:]) != wantBase || hex.EncodeToString(sum[:]) != wantNew {
		t.Fatal("the vector files differ from the hashes SPEC.md documents (regenerate with -update only when the format changes)")
	}
	res, w, err := apply(base, patch, int64(len(nw)), bsdiff.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != sum || w.n != int64(len(nw)) {
		t.Fatal("the vector patch does not give the documented result")
	}
	var ref bytes.Buffer
	if err := selfupdate.NewBSDiffPatcher().Patch(bytes.NewReader(base), &ref, bytes.NewReader(patch)); err != nil || !bytes.Equal(ref.Bytes(), nw) {
		t.Fatalf("minio/selfupdate does not apply the vector: %v", err)
	}
	ps := sha256.Sum256(patch)
	bs := sha256.Sum256(base)
	t.Logf("vector: base sha256 %s, patch %d bytes sha256 %s, result %d bytes sha256 %s, %d control entries",
		hex.EncodeToString(bs[:]), len(patch), hex.EncodeToString(ps[:]), len(nw), hex.EncodeToString(sum[:]), res.ControlEntries)
	if *update {
		writeSeeds(t, base, patch, int64(len(nw)))
	}
}

// writeSeeds writes the fuzz seed corpus: the vector, a hostile seek, and
// a few truncations.
func writeSeeds(t *testing.T, base, patch []byte, size int64) {
	dir := filepath.Join("testdata", "fuzz", "FuzzApplyPatch")
	os.MkdirAll(dir, 0o755)
	small := base[:64]
	seeds := [][]byte{
		patch,
		patch[:len(patch)/2],
		assemble(t, []differ.Control{{Add: 8, Copy: 2, Seek: -3}, {Add: 4, Copy: 0, Seek: 100}}, make([]byte, 12), []byte("ab"), 14),
		assemble(t, []differ.Control{{Add: 1 << 40}}, nil, nil, 5),
	}
	for i, s := range seeds {
		b := base
		if i >= 2 {
			b = small
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n", b, s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzApplyPatch: whatever the patch, the applier never panics, never
// writes past the size it was given, and either writes exactly that size
// or returns an error.
func FuzzApplyPatch(f *testing.F) {
	f.Fuzz(func(t *testing.T, base, patch []byte) {
		want := int64(1 << 16)
		if h, err := bsdiff.ReadHeader(bytes.NewReader(patch), int64(len(patch))); err == nil && h.NewSize <= 1<<20 {
			want = h.NewSize
		}
		res, w, err := apply(base, patch, want, bsdiff.Options{MaxControlEntries: 1 << 16})
		if w.n > want {
			t.Fatalf("wrote %d bytes, past the size %d", w.n, want)
		}
		if err == nil && (w.n != want || res.Size != want) {
			t.Fatalf("success with %d bytes written, want %d", w.n, want)
		}
	})
}
