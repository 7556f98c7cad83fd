package protocol

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ulikunitz/xz"
)

var update = flag.Bool("update", false, "regenerate protocol/testdata/vectors")

const vectorDir = "testdata/vectors"

// vector is one entry of testdata/vectors/vectors.json.
type vector struct {
	File string `json:"file"`
	// Expect is "ok" or the name of the sentinel error (see errorNames).
	Expect string `json:"expect"`
	// Stage says where the error must appear: "open" (OpenBundle) or
	// "payload" (while reading the executable stream).
	Stage       string `json:"stage,omitempty"`
	Description string `json:"description"`
}

var errorNames = map[string]error{
	"ErrMalformed":       ErrMalformed,
	"ErrSchema":          ErrSchema,
	"ErrTooLarge":        ErrTooLarge,
	"ErrUnknownKey":      ErrUnknownKey,
	"ErrBadSignature":    ErrBadSignature,
	"ErrPayloadMismatch": ErrPayloadMismatch,
	"ErrTruncated":       ErrTruncated,
	"ErrExpired":         ErrExpired,
}

// vectorExecutable is the deterministic "executable" inside every vector:
// 20000 pseudo-random bytes (not a real program; the protocol does not care).
func vectorExecutable() []byte {
	r := rand.New(rand.NewSource(1))
	b := make([]byte, 20000)
	for i := range b {
		b[i] = byte(r.Intn(16)) // compressible
	}
	return b
}

func loadVectorKeys(t testing.TB) (trusted PublicKey, trustedPriv PrivateKey, other PrivateKey) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(vectorDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pub, err := ParsePublicKey(read("TEST-ONLY-trusted.pub"))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ParsePrivateKey(read("TEST-ONLY-trusted.key"), "")
	if err != nil {
		t.Fatal(err)
	}
	oth, err := ParsePrivateKey(read("TEST-ONLY-other.key"), "")
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv, oth
}

// vectorManifest builds the manifest for payload bytes p.
func vectorManifest(t testing.TB, exe, payload []byte, encoding string) *Manifest {
	t.Helper()
	desc, err := DescribePayload(bytes.NewReader(payload), encoding, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if encoding == EncodingXZ {
		desc.XZDictSize = 64 << 10
	}
	sum := sha256.Sum256(exe)
	return &Manifest{
		Schema:   SchemaVersion,
		App:      "vector",
		Version:  "1.0.0",
		Sequence: 7,
		Created:  time.Unix(1700000000, 0).UTC(),
		Profile:  "linux-armv6",
		Target: Target{GOOS: "linux", GOARCH: "arm", GOARM: "6",
			ELF: ELF{Class: 32, Machine: "EM_ARM", Endian: "little"}},
		Build:          Build{GoVersion: "go1.26.8", Module: "example.com/vector"},
		Payload:        desc,
		Executable:     Executable{Size: int64(len(exe)), SHA256: hex.EncodeToString(sum[:])},
		Probe:          &Probe{Args: []string{"--version"}, Expect: "1.0.0", Timeout: Duration(10 * time.Second)},
		MinFreeStorage: 1 << 20,
	}
}

func xzBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 64 << 10}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rawSignManifest signs manifest bytes without validating them (for bad
// vectors whose manifest is deliberately invalid).
func bundleBytes(t testing.TB, raw, sig, payload []byte) []byte {
	var buf bytes.Buffer
	if err := WriteBundle(&buf, raw, sig, bytes.NewReader(payload), int64(len(payload)), time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func generateVectors(t *testing.T) []vector {
	_, priv, other := loadVectorKeys(t)
	exe := vectorExecutable()
	xzp := xzBytes(t, exe)
	good := vectorManifest(t, exe, xzp, EncodingXZ)
	raw, sig, err := SignManifest(good, priv)
	if err != nil {
		t.Fatal(err)
	}
	goodBundle := bundleBytes(t, raw, sig, xzp)

	var vs []vector
	write := func(name string, data []byte, expect, stage, desc string) {
		if err := os.WriteFile(filepath.Join(vectorDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, vector{File: name, Expect: expect, Stage: stage, Description: desc})
	}
	signRaw := func(m *Manifest, k PrivateKey) ([]byte, []byte) {
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b, Sign(k, b, TrustedComment(m))
	}

	write("good-xz.efb", goodBundle, "ok", "", "valid bundle, xz payload in 4 KiB chunks")

	plain := vectorManifest(t, exe, exe, EncodingNone)
	r2, s2 := signRaw(plain, priv)
	write("good-none.efb", bundleBytes(t, r2, s2, exe), "ok", "", "valid bundle, unencoded payload")

	r3, s3 := signRaw(good, other)
	write("wrong-key.efb", bundleBytes(t, r3, s3, xzp), "ErrUnknownKey", "open", "signed by a key the verifier does not trust")

	badSig := bytes.Clone(sig)
	// Flip a bit inside the base64 signature line (second line).
	lines := bytes.SplitN(badSig, []byte("\n"), 3)
	lines[1][20] ^= 0x01
	if lines[1][20] == '+' || lines[1][20] == '/' { // keep valid base64
		lines[1][20] = 'A'
	}
	write("bad-signature.efb", bundleBytes(t, raw, bytes.Join(lines, []byte("\n")), xzp), "ErrBadSignature", "open", "signature bytes altered")

	tamperedManifest := bytes.Replace(raw, []byte(`"sequence": 7`), []byte(`"sequence": 9`), 1)
	write("tampered-manifest.efb", bundleBytes(t, tamperedManifest, sig, xzp), "ErrBadSignature", "open", "manifest edited after signing (sequence 7 → 9)")

	flipped := bytes.Clone(xzp)
	flipped[len(flipped)/2] ^= 0xff
	write("flipped-payload-byte.efb", bundleBytes(t, raw, sig, flipped), "ErrPayloadMismatch", "payload", "one payload byte flipped")

	write("truncated.efb", goodBundle[:len(goodBundle)-len(xzp)/2-1024], "ErrTruncated", "payload", "bundle cut inside the payload")
	write("truncated-header.efb", goodBundle[:700], "ErrTruncated", "open", "bundle cut inside the signature entry")

	write("extra-bytes.efb", append(bytes.Clone(goodBundle), []byte("trailing garbage after the archive")...), "ErrMalformed", "payload", "data after the end of the tar archive")

	var extra bytes.Buffer
	tw := tar.NewWriter(&extra)
	for _, e := range []struct {
		name string
		data []byte
	}{{NameManifest, raw}, {NameSignature, sig}, {NamePayload, xzp}, {"evil", []byte("x")}} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: time.Unix(1700000000, 0), Format: tar.FormatUSTAR})
		tw.Write(e.data)
	}
	tw.Close()
	write("extra-entry.efb", extra.Bytes(), "ErrMalformed", "payload", "a fourth tar entry after the payload")

	wrongChunk := vectorManifest(t, exe, xzp, EncodingXZ)
	wrongChunk.Payload.Chunks[1] = wrongChunk.Payload.Chunks[0]
	r4, s4 := signRaw(wrongChunk, priv)
	write("wrong-chunk-hash.efb", bundleBytes(t, r4, s4, xzp), "ErrPayloadMismatch", "payload", "signed manifest lists a wrong hash for chunk 1")

	schema2 := bytes.Replace(raw, []byte(`"schema": 1`), []byte(`"schema": 2`), 1)
	write("unknown-schema.efb", bundleBytes(t, schema2, Sign(priv, schema2, "edgefleet"), xzp), "ErrSchema", "open", "validly signed manifest with schema 2")

	absurd := vectorManifest(t, exe, xzp, EncodingXZ)
	absurd.Payload.Size = 1 << 40
	ab, _ := json.MarshalIndent(absurd, "", "  ")
	write("absurd-size.efb", bundleBytes(t, ab, Sign(priv, ab, "edgefleet"), xzp), "ErrTooLarge", "open", "validly signed manifest declaring a 1 TiB payload")

	var bigDict bytes.Buffer
	bw, err := xz.WriterConfig{DictCap: 8 << 20}.NewWriter(&bigDict)
	if err != nil {
		t.Fatal(err)
	}
	bw.Write(exe)
	bw.Close()
	bigM := vectorManifest(t, exe, bigDict.Bytes(), EncodingXZ) // declares 64 KiB
	r5, s5 := signRaw(bigM, priv)
	write("xz-dict-larger-than-signed.efb", bundleBytes(t, r5, s5, bigDict.Bytes()), "ErrTooLarge", "payload", "xz stream uses an 8 MiB dictionary, the signed manifest declares 64 KiB")

	swapped := bytes.Clone(goodBundle)
	copy(swapped[0:], []byte("payload\x00\x00\x00\x00\x00\x00")) // first entry name no longer manifest.json
	write("wrong-order.efb", swapped, "ErrMalformed", "open", "first tar entry is not manifest.json")

	// Validly signed manifests that encoding/json alone would read as
	// sequence 9 while the signed text says 7 to an exact reader.
	dup := bytes.Replace(raw, []byte(`"sequence": 7,`), []byte(`"sequence": 7,
  "sequence": 9,`), 1)
	write("duplicate-key.efb", bundleBytes(t, dup, Sign(priv, dup, TrustedComment(good)), xzp), "ErrMalformed", "open", "validly signed manifest with the key sequence twice (7, then 9)")
	caseVariant := bytes.Replace(raw, []byte(`"sequence": 7,`), []byte(`"sequence": 7,
  "Sequence": 9,`), 1)
	write("case-variant-key.efb", bundleBytes(t, caseVariant, Sign(priv, caseVariant, TrustedComment(good)), xzp), "ErrMalformed", "open", "validly signed manifest with sequence 7 and Sequence 9")

	write("not-a-tar.efb", []byte("this is not a bundle\n"), "ErrTruncated", "open", "plain text instead of a tar file")

	return vs
}

func TestVectors(t *testing.T) {
	if *update {
		vs := generateVectors(t)
		b, _ := json.MarshalIndent(vs, "", "  ")
		if err := os.WriteFile(filepath.Join(vectorDir, "vectors.json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pub, _, _ := loadVectorKeys(t)
	kr := NewKeyring(pub)
	b, err := os.ReadFile(filepath.Join(vectorDir, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 12 {
		t.Fatalf("only %d vectors", len(vs))
	}
	wantExe := sha256.Sum256(vectorExecutable())
	for _, v := range vs {
		t.Run(v.File, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(vectorDir, v.File))
			if err != nil {
				t.Fatal(err)
			}
			stage, exeSum, err := RunVector(data, kr)
			if v.Expect == "ok" {
				if err != nil {
					t.Fatalf("%s: %v", v.Description, err)
				}
				if exeSum != wantExe {
					t.Fatalf("decoded executable hash mismatch")
				}
				return
			}
			want := errorNames[v.Expect]
			if want == nil {
				t.Fatalf("vectors.json names unknown error %q", v.Expect)
			}
			if !errors.Is(err, want) {
				t.Fatalf("%s: got %v, want %s", v.Description, err, v.Expect)
			}
			if stage != v.Stage {
				t.Fatalf("%s: failed at %s, want at %s (%v)", v.Description, stage, v.Stage, err)
			}
			if len(err.Error()) < 20 {
				t.Errorf("error message too terse to act on: %q", err)
			}
		})
	}
}

// RunVector opens a bundle and reads the executable, returning where it
// failed ("open" or "payload") and the executable's sha256.
func RunVector(data []byte, kr *Keyring) (stage string, sum [32]byte, err error) {
	b, err := OpenBundle(bytes.NewReader(data), kr)
	if err != nil {
		return "open", sum, err
	}
	exe, err := b.Executable()
	if err != nil {
		return "payload", sum, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, exe); err != nil {
		return "payload", sum, err
	}
	copy(sum[:], h.Sum(nil))
	return "", sum, nil
}
