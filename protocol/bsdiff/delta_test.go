package bsdiff_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	differ "github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
	"github.com/edgefleet/edgefleet/protocol/bsdiff"
)

func hexSum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// deltaManifest builds a delta manifest for patch from base to nw.
func deltaManifest(t *testing.T, base, nw, patch []byte, entries int64) *protocol.Manifest {
	t.Helper()
	p, err := protocol.DescribePayload(bytes.NewReader(patch), protocol.EncodingNone, protocol.MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	p.Encoding = protocol.EncodingBSDiff
	m := &protocol.Manifest{
		Schema: protocol.SchemaVersion, App: "hello", Version: "2.0.0", Sequence: 2, Created: time.Unix(0, 0).UTC(), Profile: "linux-amd64",
		Target:     protocol.Target{GOOS: "linux", GOARCH: "amd64", ELF: protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}},
		Payload:    p,
		Executable: protocol.Executable{Size: int64(len(nw)), SHA256: hexSum(nw)},
		Delta: &protocol.Delta{Format: protocol.DeltaFormatBSDiff40, BaseSize: int64(len(base)), BaseSHA256: hexSum(base),
			FullPayloadSHA256: strings.Repeat("ee", 32), ControlEntries: entries, MaxBzip2Level: 9},
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestApplyDelta(t *testing.T) {
	base, nw := vectorPair()
	patch, st, err := differ.Diff(base, nw, differ.Options{})
	if err != nil {
		t.Fatal(err)
	}
	run := func(m *protocol.Manifest, b []byte, maxLevel int) (*bytes.Buffer, error) {
		var out bytes.Buffer
		_, err := bsdiff.ApplyDelta(context.Background(), m, bytes.NewReader(b), int64(len(b)), bytes.NewReader(patch), int64(len(patch)), &out, maxLevel)
		return &out, err
	}
	m := deltaManifest(t, base, nw, patch, st.ControlEntries)
	if out, err := run(m, base, 0); err != nil || !bytes.Equal(out.Bytes(), nw) {
		t.Fatalf("good delta: %v", err)
	}
	modified := append([]byte(nil), base...)
	modified[100] ^= 1
	if out, err := run(m, modified, 0); !errors.Is(err, bsdiff.ErrBaseMismatch) || out.Len() != 0 || !strings.Contains(err.Error(), "modified, or another build") {
		t.Fatalf("modified base: %v (%d bytes written)", err, out.Len())
	}
	if _, err := run(m, base[:100], 0); !errors.Is(err, bsdiff.ErrBaseMismatch) {
		t.Fatalf("short base: %v", err)
	}
	if _, err := run(m, base, 5); !errors.Is(err, protocol.ErrTooLarge) || !strings.Contains(err.Error(), "this device allows level 5") {
		t.Fatalf("level cap: %v", err)
	}
	wrongCount := deltaManifest(t, base, nw, patch, st.ControlEntries+1)
	if _, err := run(wrongCount, base, 0); !errors.Is(err, protocol.ErrMalformed) || !strings.Contains(err.Error(), "signed count") {
		t.Fatalf("entry count: %v", err)
	}
	other := append(append([]byte(nil), nw[:len(nw)-1]...), 'X')
	wrongResult := deltaManifest(t, base, other, patch, st.ControlEntries)
	if _, err := run(wrongResult, base, 0); !errors.Is(err, protocol.ErrPayloadMismatch) {
		t.Fatalf("result hash: %v", err)
	}
}
