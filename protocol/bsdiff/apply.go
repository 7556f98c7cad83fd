package bsdiff

import (
	"bufio"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/edgefleet/edgefleet/protocol"
)

// Magic is the first 8 bytes of every BSDIFF40 patch.
const Magic = "BSDIFF40"

// HeaderSize is the fixed header: magic, compressed control length,
// compressed diff length, result size (each int64, sign-magnitude little
// endian as bsdiff writes them).
const HeaderSize = 32

// Defaults for Options (SPEC.md §8.10 limits).
const (
	DefaultMaxControlEntries = 1 << 22
	DefaultMaxBzip2Level     = 9
	MaxResultSize            = 1 << 30
	MaxPatchSize             = 1 << 30
)

// Options bound what a patch may ask of the applier.
type Options struct {
	// MaxControlEntries is the most (add, copy, seek) triples a patch may
	// hold. Zero means DefaultMaxControlEntries (4 Mi; a patch of the
	// 8 MB agent holds tens of thousands).
	MaxControlEntries int64
	// MaxBzip2Level is the highest bzip2 block-size level (1..9) a stream
	// may declare; each decoder allocates 400 KB per level. Zero means
	// DefaultMaxBzip2Level.
	MaxBzip2Level int
}

func (o Options) withDefaults() Options {
	if o.MaxControlEntries <= 0 {
		o.MaxControlEntries = DefaultMaxControlEntries
	}
	if o.MaxBzip2Level <= 0 || o.MaxBzip2Level > 9 {
		o.MaxBzip2Level = DefaultMaxBzip2Level
	}
	return o
}

// Header is the parsed fixed header of a patch.
type Header struct {
	CtrlLen, DiffLen, NewSize int64
}

// Result describes what Apply wrote.
type Result struct {
	Size           int64
	SHA256         [32]byte
	ControlEntries int64
}

// offtin decodes bsdiff's 8-byte sign-magnitude little-endian integer.
func offtin(b []byte) int64 {
	u := binary.LittleEndian.Uint64(b)
	v := int64(u &^ (1 << 63))
	if u&(1<<63) != 0 {
		v = -v
	}
	return v
}

// ReadHeader reads and checks the fixed header of a patch of patchSize bytes.
func ReadHeader(patch io.ReaderAt, patchSize int64) (Header, error) {
	var h Header
	if patchSize < HeaderSize {
		return h, fmt.Errorf("bsdiff: patch is %d bytes, shorter than its %d-byte header: %w", patchSize, HeaderSize, protocol.ErrTruncated)
	}
	if patchSize > MaxPatchSize {
		return h, fmt.Errorf("bsdiff: patch is %d bytes, above the %d limit: %w", patchSize, int64(MaxPatchSize), protocol.ErrTooLarge)
	}
	var b [HeaderSize]byte
	if _, err := patch.ReadAt(b[:], 0); err != nil {
		return h, fmt.Errorf("bsdiff: read header: %w (%w)", err, protocol.ErrTruncated)
	}
	if string(b[:8]) != Magic {
		return h, fmt.Errorf("bsdiff: patch does not start with %q: %w", Magic, protocol.ErrMalformed)
	}
	h.CtrlLen, h.DiffLen, h.NewSize = offtin(b[8:]), offtin(b[16:]), offtin(b[24:])
	switch {
	case h.CtrlLen < 0 || h.DiffLen < 0 || h.NewSize < 0:
		return h, fmt.Errorf("bsdiff: negative length in header (control %d, diff %d, result %d): %w", h.CtrlLen, h.DiffLen, h.NewSize, protocol.ErrMalformed)
	case h.NewSize > MaxResultSize:
		return h, fmt.Errorf("bsdiff: result size %d above the %d limit: %w", h.NewSize, int64(MaxResultSize), protocol.ErrTooLarge)
	case h.CtrlLen > patchSize-HeaderSize || h.DiffLen > patchSize-HeaderSize-h.CtrlLen:
		return h, fmt.Errorf("bsdiff: header declares %d + %d bytes of control and diff streams, the patch holds %d after its header: %w", h.CtrlLen, h.DiffLen, patchSize-HeaderSize, protocol.ErrTruncated)
	}
	return h, nil
}

// stream opens one bzip2 stream of the patch, refusing a declared block
// size above maxLevel before a decoder allocates for it.
func stream(name string, patch io.ReaderAt, off, n int64, maxLevel int) (io.Reader, error) {
	if n < 4 {
		return nil, fmt.Errorf("bsdiff: %s stream is %d bytes, too short for a bzip2 header: %w", name, n, protocol.ErrTruncated)
	}
	var b [4]byte
	if _, err := patch.ReadAt(b[:], off); err != nil {
		return nil, fmt.Errorf("bsdiff: read %s stream header: %w (%w)", name, err, protocol.ErrTruncated)
	}
	if string(b[:3]) != "BZh" || b[3] < '1' || b[3] > '9' {
		return nil, fmt.Errorf("bsdiff: %s stream is not bzip2 (starts %q): %w", name, b[:], protocol.ErrMalformed)
	}
	if int(b[3]-'0') > maxLevel {
		return nil, fmt.Errorf("bsdiff: %s stream declares bzip2 level %c, above the allowed %d (decoder memory): %w", name, b[3], maxLevel, protocol.ErrTooLarge)
	}
	return bzip2.NewReader(bufio.NewReaderSize(io.NewSectionReader(patch, off, n), 16<<10)), nil
}

// readFull reads exactly len(b) bytes from a patch stream, naming the
// stream in the error.
func readFull(name string, r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("bsdiff: %s stream ends early: %w", name, protocol.ErrTruncated)
		}
		return fmt.Errorf("bsdiff: %s stream: %v: %w", name, err, protocol.ErrMalformed)
	}
	return nil
}

// atEOF checks that a stream has nothing left.
func atEOF(name string, r io.Reader) error {
	var b [1]byte
	n, err := r.Read(b[:])
	for n == 0 && err == nil {
		n, err = r.Read(b[:])
	}
	if n > 0 {
		return fmt.Errorf("bsdiff: %s stream holds data past the end of the result: %w", name, protocol.ErrMalformed)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("bsdiff: %s stream ends early: %w", name, protocol.ErrTruncated)
	}
	if err != io.EOF {
		return fmt.Errorf("bsdiff: %s stream does not end cleanly: %v: %w", name, err, protocol.ErrMalformed)
	}
	return nil
}

const bufSize = 32 << 10

// Apply applies the BSDIFF40 patch (patchSize bytes, read with ReadAt) to
// base (baseSize bytes, read with ReadAt at the offsets the patch names)
// and writes exactly wantSize bytes to out, sequentially. wantSize is the
// signed result size; a patch whose header declares another size is
// refused before anything is written. The caller checks Result.SHA256
// against the signed hash. ctx is checked between control entries.
func Apply(ctx context.Context, base io.ReaderAt, baseSize int64, patch io.ReaderAt, patchSize int64, out io.Writer, wantSize int64, opts Options) (Result, error) {
	opts = opts.withDefaults()
	var res Result
	h, err := ReadHeader(patch, patchSize)
	if err != nil {
		return res, err
	}
	if h.NewSize != wantSize {
		return res, fmt.Errorf("bsdiff: patch makes %d bytes, the signed result size is %d: %w", h.NewSize, wantSize, protocol.ErrMalformed)
	}
	if baseSize < 0 {
		return res, fmt.Errorf("bsdiff: negative base size %d: %w", baseSize, protocol.ErrMalformed)
	}
	ctrl, err := stream("control", patch, HeaderSize, h.CtrlLen, opts.MaxBzip2Level)
	if err != nil {
		return res, err
	}
	diff, err := stream("diff", patch, HeaderSize+h.CtrlLen, h.DiffLen, opts.MaxBzip2Level)
	if err != nil {
		return res, err
	}
	extraOff := HeaderSize + h.CtrlLen + h.DiffLen
	extra, err := stream("extra", patch, extraOff, patchSize-extraOff, opts.MaxBzip2Level)
	if err != nil {
		return res, err
	}

	sum := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(out, sum), bufSize)
	dbuf := make([]byte, bufSize)
	obuf := make([]byte, bufSize)
	var cb [24]byte
	var oldpos, newpos int64
	for newpos < wantSize {
		if res.ControlEntries >= opts.MaxControlEntries {
			return res, fmt.Errorf("bsdiff: more than %d control entries: %w", opts.MaxControlEntries, protocol.ErrTooLarge)
		}
		if res.ControlEntries%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return res, err
			}
		}
		if err := readFull("control", ctrl, cb[:]); err != nil {
			return res, err
		}
		res.ControlEntries++
		add, cp, seek := offtin(cb[0:]), offtin(cb[8:]), offtin(cb[16:])
		entry := res.ControlEntries
		switch {
		case add < 0 || cp < 0:
			return res, fmt.Errorf("bsdiff: control entry %d has a negative length (add %d, copy %d): %w", entry, add, cp, protocol.ErrMalformed)
		case add > wantSize-newpos || cp > wantSize-newpos-add:
			return res, fmt.Errorf("bsdiff: control entry %d writes past the signed result size %d (at %d, add %d, copy %d): %w", entry, wantSize, newpos, add, cp, protocol.ErrMalformed)
		case add > baseSize-oldpos:
			return res, fmt.Errorf("bsdiff: control entry %d reads base bytes [%d, %d) outside the %d-byte base: %w", entry, oldpos, oldpos+add, baseSize, protocol.ErrMalformed)
		}
		// add: result = diff + base, both streamed through fixed buffers.
		for left := add; left > 0; {
			n := int64(len(dbuf))
			if left < n {
				n = left
			}
			if err := readFull("diff", diff, dbuf[:n]); err != nil {
				return res, err
			}
			if _, err := base.ReadAt(obuf[:n], oldpos); err != nil {
				return res, fmt.Errorf("bsdiff: read base at %d: %w", oldpos, err)
			}
			for i := range dbuf[:n] {
				dbuf[i] += obuf[i]
			}
			if _, err := w.Write(dbuf[:n]); err != nil {
				return res, fmt.Errorf("bsdiff: write result: %w", err)
			}
			left -= n
			oldpos += n
			newpos += n
		}
		// copy: new bytes from the extra stream.
		for left := cp; left > 0; {
			n := int64(len(dbuf))
			if left < n {
				n = left
			}
			if err := readFull("extra", extra, dbuf[:n]); err != nil {
				return res, err
			}
			if _, err := w.Write(dbuf[:n]); err != nil {
				return res, fmt.Errorf("bsdiff: write result: %w", err)
			}
			left -= n
			newpos += n
		}
		// seek: the base position must stay inside [0, base size].
		if seek < -oldpos || seek > baseSize-oldpos {
			return res, fmt.Errorf("bsdiff: control entry %d seeks the base from %d by %d, outside the %d-byte base: %w", entry, oldpos, seek, baseSize, protocol.ErrMalformed)
		}
		oldpos += seek
	}
	for _, s := range []struct {
		name string
		r    io.Reader
	}{{"control", ctrl}, {"diff", diff}, {"extra", extra}} {
		if err := atEOF(s.name, s.r); err != nil {
			return res, err
		}
	}
	if err := w.Flush(); err != nil {
		return res, fmt.Errorf("bsdiff: write result: %w", err)
	}
	res.Size = newpos
	copy(res.SHA256[:], sum.Sum(nil))
	return res, nil
}
