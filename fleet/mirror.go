package fleet

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgefleet/edgefleet/protocol"
)

// writeMirrorChunk writes chunk i of payload p (already verified against
// the signed manifest) under dir as protocol.MirrorChunkPath (SPEC.md
// §8.9): idempotent (an object already there with the signed length and
// hash is kept; any other is replaced) and atomic (a temporary file in the
// same directory, fsynced, then renamed), so a web server serving dir
// never serves half a chunk.
func writeMirrorChunk(dir, app string, p *protocol.Payload, i int, data []byte) (written bool, err error) {
	path := filepath.Join(dir, filepath.FromSlash(protocol.MirrorChunkPath(app, p.SHA256, i)))
	if old, err := os.ReadFile(path); err == nil && len(old) == len(data) && bytes.Equal(old, data) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("mirror: %w", err)
	}
	sum := sha256.Sum256(data)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+hex.EncodeToString(sum[:4])+"-*")
	if err != nil {
		return false, fmt.Errorf("mirror: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename: a no-op
	if _, err := tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644) // served by a web server running as another user
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return false, fmt.Errorf("mirror: write %s: %w", path, err)
	}
	return true, nil
}
