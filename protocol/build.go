package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// DescribePayload reads an encoded payload and returns its Payload record
// (size, sha256, chunk hashes) for the given encoding and chunk size.
func DescribePayload(r io.Reader, encoding string, chunkSize int64) (Payload, error) {
	if chunkSize < MinChunkSize || chunkSize > MaxChunkSize {
		return Payload{}, fmt.Errorf("chunk size %d outside %d..%d: %w", chunkSize, MinChunkSize, MaxChunkSize, ErrTooLarge)
	}
	p := Payload{Encoding: encoding, ChunkSize: chunkSize}
	whole := sha256.New()
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			sum := sha256.Sum256(buf[:n])
			p.Chunks = append(p.Chunks, hex.EncodeToString(sum[:]))
			whole.Write(buf[:n])
			p.Size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return Payload{}, err
		}
	}
	p.SHA256 = hex.EncodeToString(whole.Sum(nil))
	return p, nil
}

// TrustedComment is the minisign trusted comment edgefleet puts on a
// manifest signature. It is signed too, and shown by `minisign -V`.
func TrustedComment(m *Manifest) string {
	return fmt.Sprintf("edgefleet app:%s version:%s sequence:%d profile:%s", m.App, m.Version, m.Sequence, m.Profile)
}

// SignManifest validates m, encodes it and signs the encoded bytes. The
// returned raw bytes are what goes into the bundle; sig signs exactly them.
func SignManifest(m *Manifest, priv PrivateKey) (raw, sig []byte, err error) {
	if err := m.Validate(); err != nil {
		return nil, nil, err
	}
	raw, err = m.Marshal()
	if err != nil {
		return nil, nil, err
	}
	return raw, Sign(priv, raw, TrustedComment(m)), nil
}

// WriteBundleFile writes a bundle to path atomically (see WriteFileAtomic).
func WriteBundleFile(path string, manifest, sig []byte, payload io.Reader, payloadSize int64, mtime time.Time) error {
	return WriteBundleFileKeySet(path, nil, manifest, sig, payload, payloadSize, mtime)
}

// WriteBundleFileKeySet is WriteBundleFile with the optional keyset.json
// entry first (WriteBundleKeySet; nil: none).
func WriteBundleFileKeySet(path string, keyset, manifest, sig []byte, payload io.Reader, payloadSize int64, mtime time.Time) error {
	return WriteFileAtomic(path, 0o644, func(w io.Writer) error {
		return WriteBundleKeySet(w, keyset, manifest, sig, payload, payloadSize, mtime)
	})
}

// WriteFileAtomic creates path with mode through write: a temporary file in
// the same directory, fsynced, renamed over path, directory fsynced. After a
// crash path holds the old content or the new, never a partial file; on
// error nothing is left behind.
func WriteFileAtomic(path string, mode os.FileMode, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = write(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that a rename in it survives power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
