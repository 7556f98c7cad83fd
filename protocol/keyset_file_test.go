package protocol

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A key set message file is read whole up to MaxKeySetMessage and refused,
// unread past the limit, above it.
func TestReadKeySetFile(t *testing.T) {
	dir := t.TempDir()
	at := filepath.Join(dir, "at-limit.json")
	if err := os.WriteFile(at, bytes.Repeat([]byte{' '}, MaxKeySetMessage), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadKeySetFile(at); err != nil || len(b) != MaxKeySetMessage {
		t.Fatalf("a file of exactly the limit: %d bytes, %v", len(b), err)
	}
	over := filepath.Join(dir, "over.json")
	if err := os.WriteFile(over, bytes.Repeat([]byte{' '}, MaxKeySetMessage+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeySetFile(over); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a file one byte over the limit: %v, want ErrTooLarge", err)
	}
	if _, err := ReadKeySetFile(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v", err)
	}
}
