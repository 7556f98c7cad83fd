package packer

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/selfupdate"

	"github.com/edgefleet/edgefleet/protocol"
	"github.com/edgefleet/edgefleet/protocol/bsdiff"
)

// helloModule writes the hello sample into a module of its own under dir,
// with extra appended to main.go (a code change between two releases).
func helloModule(t *testing.T, dir, extra string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "testdata", "apps", "hello", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/hello\n\ngo 1.22\n"), 0o644)
	if err := os.WriteFile(filepath.Join(dir, "hello", "main.go"), append(src, extra...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A small code change: one more function, called at start-up.
const helloChange = `
func init() {
	if os.Getenv("HELLO_GREETING") != "" {
		fmt.Fprintln(os.Stderr, "greeting:", os.Getenv("HELLO_GREETING"))
	}
}
`

// Round trip: pack v1, pack v2 --delta-from v1 for armv6, arm64 and amd64
// (and an armv6 UPX profile when upx is here); each delta, applied by the
// device's streaming applier and by minio/selfupdate's patcher to v1's
// executable, gives v2's executable byte for byte.
func TestDeltaRoundTrip(t *testing.T) {
	requireGo(t)
	pub, priv := testKey(t)
	root := t.TempDir()
	v1src, v2src := filepath.Join(root, "src1"), filepath.Join(root, "src2")
	helloModule(t, v1src, "")
	helloModule(t, v2src, helloChange)
	profiles := lookupProfiles(t, "linux-armv6", "linux-arm64", "linux-amd64")
	upx := findUPX(repoRoot(t))
	if upx != "" {
		p := profiles[0]
		p.Name, p.UPX = upxProfile, true
		profiles = append(profiles, p)
	} else {
		t.Log("upx not found: the UPX profile's delta skip is not checked here")
	}
	o1 := baseOptions(t, priv, filepath.Join(root, "v1"), profiles...)
	o1.Dir, o1.Package, o1.App, o1.Version, o1.Sequence, o1.UPX, o1.NoProbe = v1src, "./hello", "hello", "1.0.0", 1, upx, true
	if _, err := Pack(context.Background(), o1); err != nil {
		t.Fatal(err)
	}
	o2 := o1
	o2.Dir, o2.Version, o2.Sequence, o2.OutDir = v2src, "1.1.0", 2, filepath.Join(root, "v2")
	o2.DeltaFrom = []string{o1.OutDir}
	res, err := Pack(context.Background(), o2)
	if err != nil {
		t.Fatal(err)
	}
	kr := protocol.NewKeyring(pub)
	for _, r := range res {
		t.Run(r.Profile.Name, func(t *testing.T) {
			if r.Profile.UPX {
				last := r.Steps[len(r.Steps)-1]
				if last.Step != "delta" || last.State != StepSkip || last.Detail != UPXDeltaSkip || len(r.Deltas) != 0 {
					t.Fatalf("UPX profile: delta step %+v, deltas %+v", last, r.Deltas)
				}
				return
			}
			if len(r.Deltas) != 1 || r.Deltas[0].Bundle == "" {
				t.Fatalf("deltas %+v", r.Deltas)
			}
			d := r.Deltas[0]
			if want := filepath.Join(o2.OutDir, "hello_1.1.0_"+r.Profile.Name+".from-1.0.0.efb"); d.Bundle != want {
				t.Errorf("delta bundle %s, want %s", d.Bundle, want)
			}
			oldExe, _ := extract(t, filepath.Join(o1.OutDir, "hello_1.0.0_"+r.Profile.Name+".efb"), pub)
			newExe, full := extract(t, r.Bundle, pub)
			old, _ := os.ReadFile(oldExe)
			want, _ := os.ReadFile(newExe)

			f, err := os.Open(d.Bundle)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b, err := protocol.OpenBundle(f, kr)
			if err != nil {
				t.Fatal(err)
			}
			if err := protocol.CheckDeltaFor(b.Manifest, full); err != nil {
				t.Fatalf("delta does not stand for the full release: %v", err)
			}
			pr, err := b.Payload()
			if err != nil {
				t.Fatal(err)
			}
			var patch bytes.Buffer
			if _, err := patch.ReadFrom(pr); err != nil {
				t.Fatalf("delta payload: %v", err)
			}
			var got bytes.Buffer
			if _, err := bsdiff.ApplyDelta(context.Background(), b.Manifest, bytes.NewReader(old), int64(len(old)), bytes.NewReader(patch.Bytes()), int64(patch.Len()), &got, 0); err != nil {
				t.Fatalf("streaming applier: %v", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatal("delta applied by the streaming applier differs from the full v2 executable")
			}
			var ref bytes.Buffer
			if err := selfupdate.NewBSDiffPatcher().Patch(bytes.NewReader(old), &ref, bytes.NewReader(patch.Bytes())); err != nil || !bytes.Equal(ref.Bytes(), want) {
				t.Fatalf("minio/selfupdate's patcher: %v (equal %v)", err, bytes.Equal(ref.Bytes(), want))
			}
			t.Logf("%s: delta %d bytes = %.2f%% of the %d-byte binary, %.1f%% of the %d-byte xz payload",
				r.Profile.Name, d.PatchSize, 100*float64(d.PatchSize)/float64(len(want)), len(want), 100*float64(d.PatchSize)/float64(r.PayloadSize), r.PayloadSize)
		})
	}

	// Not clearly smaller: with a 0.1 % ceiling the delta is skipped and
	// the result says why.
	o3 := o2
	o3.OutDir, o3.Profiles, o3.DeltaMaxShare = filepath.Join(root, "v3"), profiles[2:3], 0.001
	res, err = Pack(context.Background(), o3)
	if err != nil {
		t.Fatal(err)
	}
	if d := res[0].Deltas; len(d) != 1 || d[0].Bundle != "" || !strings.Contains(d[0].Skipped, "not clearly smaller than the full payload") {
		t.Fatalf("deltas %+v", d)
	}
	if m, _ := filepath.Glob(filepath.Join(o3.OutDir, "*.from-*")); len(m) != 0 {
		t.Fatalf("skipped delta written: %v", m)
	}
}
