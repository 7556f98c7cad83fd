package protocol

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand"
	"testing"
)

// benchBundle is a 32 MiB random (incompressible) executable stored with
// encoding none in 128 KiB chunks: what the reader costs on top of hashing.
func benchBundle(b *testing.B) ([]byte, *Keyring, []byte) {
	b.Helper()
	exe := make([]byte, 32<<20)
	rand.New(rand.NewSource(2)).Read(exe)
	pub, priv, _ := loadVectorKeys(b)
	desc, err := DescribePayload(bytes.NewReader(exe), EncodingNone, 128<<10)
	if err != nil {
		b.Fatal(err)
	}
	m := vectorManifest(b, exe[:1], exe[:1], EncodingNone)
	m.Payload = desc
	m.Executable = Executable{Size: desc.Size, SHA256: desc.SHA256}
	raw, sig, err := SignManifest(m, priv)
	if err != nil {
		b.Fatal(err)
	}
	return bundleBytes(b, raw, sig, exe), NewKeyring(pub), exe
}

// BenchmarkBundleVerify measures the full streaming verification
// (signature, per-chunk hashes, sizes, tar framing) of a 32 MiB bundle.
// Compare with BenchmarkPlainSHA256 (docs/BENCHMARKS.md).
func BenchmarkBundleVerify(b *testing.B) {
	data, kr, _ := benchBundle(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bun, err := OpenBundle(bytes.NewReader(data), kr)
		if err != nil {
			b.Fatal(err)
		}
		exe, err := bun.Executable()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, exe); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPlainSHA256 hashes the same bytes once: the floor.
func BenchmarkPlainSHA256(b *testing.B) {
	data, _, _ := benchBundle(b)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h := sha256.New()
		if _, err := io.Copy(h, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
