package protocol

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Names of the bundle's tar entries, in their required order. NameKeySet
// is optional (SPEC.md §2, §8.12); the other three are required.
const (
	NameKeySet    = "keyset.json"
	NameManifest  = "manifest.json"
	NameSignature = "manifest.json.minisig"
	NamePayload   = "payload"
)

// BundleExt is the file extension of a bundle.
const BundleExt = ".efb"

// WriteBundle writes a bundle: the manifest bytes exactly as signed, the
// signature, then the payload read from payload (which must yield exactly
// m.Payload.Size bytes). Tar headers are fixed (mode 0644, uid/gid 0, no
// user names, USTAR, ModTime mtime) so the same inputs give the same bytes.
func WriteBundle(w io.Writer, manifest, sig []byte, payload io.Reader, payloadSize int64, mtime time.Time) error {
	return WriteBundleKeySet(w, nil, manifest, sig, payload, payloadSize, mtime)
}

// WriteBundleKeySet is WriteBundle with an optional first entry
// keyset.json holding a key set chain message (SPEC.md §8.12), which must
// parse (ParseKeySetChain; its signatures are not checked here). A nil
// keyset writes exactly what WriteBundle writes. Agents older than the
// keyset.json entry refuse such a bundle (SPEC.md §2).
func WriteBundleKeySet(w io.Writer, keyset, manifest, sig []byte, payload io.Reader, payloadSize int64, mtime time.Time) error {
	if keyset != nil {
		if _, _, err := ParseKeySetChain(keyset); err != nil {
			return fmt.Errorf("bundle: %s: %w", NameKeySet, err)
		}
	}
	tw := tar.NewWriter(w)
	add := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     name,
			Mode:     0o644,
			Size:     size,
			ModTime:  mtime.UTC().Truncate(time.Second),
			Format:   tar.FormatUSTAR,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("bundle: write %s header: %w", name, err)
		}
		n, err := io.Copy(tw, r)
		if err != nil {
			return fmt.Errorf("bundle: write %s: %w", name, err)
		}
		if n != size {
			return fmt.Errorf("bundle: %s is %d bytes, declared %d", name, n, size)
		}
		return nil
	}
	if keyset != nil {
		if err := add(NameKeySet, int64(len(keyset)), bytes.NewReader(keyset)); err != nil {
			return err
		}
	}
	if err := add(NameManifest, int64(len(manifest)), bytes.NewReader(manifest)); err != nil {
		return err
	}
	if err := add(NameSignature, int64(len(sig)), bytes.NewReader(sig)); err != nil {
		return err
	}
	if err := add(NamePayload, payloadSize, payload); err != nil {
		return err
	}
	return tw.Close()
}

// Bundle is an opened bundle whose manifest signature has verified. Its
// payload has not been read yet: use Payload or Executable once.
type Bundle struct {
	// Manifest is the parsed, verified manifest.
	Manifest *Manifest
	// RawManifest and RawSignature are the bytes as stored.
	RawManifest  []byte
	RawSignature []byte
	// Key is the trusted key that signed the manifest.
	Key PublicKey
	// RawKeySet is the optional keyset.json entry as stored (nil when the
	// bundle has none). It is untrusted: not covered by the manifest
	// signature, and verified only by whoever applies it
	// (TrustState.Advance).
	RawKeySet []byte

	tr       *tar.Reader
	src      io.Reader
	consumed bool
}

// ReadManifest opens the bundle file at path and returns its manifest,
// verified with kr as OpenBundle does; no payload byte is read.
func ReadManifest(path string, kr *Keyring) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := OpenBundle(f, kr)
	if err != nil {
		return nil, err
	}
	return b.Manifest, nil
}

// OpenBundle reads the manifest and signature entries from r, verifies the
// signature with kr, parses the manifest and positions the stream at the
// payload. No payload byte is read. Expiry is not checked here (the caller
// knows the clock): call Manifest.CheckExpiry. An optional keyset.json
// entry is read (bounded) and kept in Bundle.RawKeySet, not applied: use
// OpenBundleWith to apply it before the manifest is verified.
func OpenBundle(r io.Reader, kr *Keyring) (*Bundle, error) {
	return OpenBundleWith(r, OpenOptions{Keyring: kr})
}

// OpenOptions says how OpenBundleWith verifies a bundle.
type OpenOptions struct {
	// Keyring verifies the manifest signature. Required.
	Keyring *Keyring
	// KeySet, when set, is called with the bytes of the optional first
	// entry keyset.json (at most MaxKeySetMessage; neither parsed nor
	// verified: untrusted) before the manifest signature is checked, and
	// not called when the bundle has none. The keyring it returns
	// verifies the manifest (nil: Keyring). A device applies the key set
	// there (TrustState.Advance), so that a release signed by a key the
	// key set introduces verifies; it never fails the open (SPEC.md §2).
	KeySet func(raw []byte) *Keyring
}

// OpenBundleWith is OpenBundle with options.
func OpenBundleWith(r io.Reader, o OpenOptions) (*Bundle, error) {
	kr := o.Keyring
	tr := tar.NewReader(r)
	hdr, err := nextHeader(tr, NameManifest, NameKeySet)
	if err != nil {
		return nil, err
	}
	var rawK []byte
	if hdr.Name == NameKeySet {
		if rawK, err = readBody(tr, hdr, MaxKeySetMessage); err != nil {
			return nil, err
		}
		if o.KeySet != nil {
			if k := o.KeySet(rawK); k != nil {
				kr = k
			}
		}
		if hdr, err = nextHeader(tr, NameManifest); err != nil {
			return nil, err
		}
	}
	rawM, err := readBody(tr, hdr, MaxManifestSize)
	if err != nil {
		return nil, err
	}
	rawS, err := readEntry(tr, NameSignature, MaxSignatureSize)
	if err != nil {
		return nil, err
	}
	key, err := kr.Verify(rawM, rawS)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(rawM)
	if err != nil {
		return nil, err
	}
	if err := kr.Authorize(key, m); err != nil {
		return nil, err
	}
	hdr, err = nextHeader(tr, NamePayload)
	if err != nil {
		return nil, err
	}
	if hdr.Size != m.Payload.Size {
		return nil, fmt.Errorf("bundle payload entry is %d bytes, the signed manifest says %d: %w", hdr.Size, m.Payload.Size, ErrPayloadMismatch)
	}
	return &Bundle{Manifest: m, RawManifest: rawM, RawSignature: rawS, RawKeySet: rawK, Key: key, tr: tr, src: r}, nil
}

// nextHeader reads the next tar header, which must be a regular file
// named want (or one of also).
func nextHeader(tr *tar.Reader, want string, also ...string) (*tar.Header, error) {
	hdr, err := tr.Next()
	if err == io.EOF {
		return nil, fmt.Errorf("bundle ends before %s: %w", want, ErrTruncated)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("bundle ends inside a tar header before %s: %w", want, ErrTruncated)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle is not a valid tar file (%v); is it really an .efb? %w", err, ErrMalformed)
	}
	ok := hdr.Name == want
	for _, a := range also {
		ok = ok || hdr.Name == a
	}
	if !ok {
		if hdr.Name == NameKeySet {
			return nil, fmt.Errorf("bundle entry %s where %q must be: a key set may only be the first entry: %w", NameKeySet, want, ErrMalformed)
		}
		return nil, fmt.Errorf("bundle entry %q where %q must be: %w", clip(hdr.Name), want, ErrMalformed)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("bundle entry %s is not a regular file: %w", hdr.Name, ErrMalformed)
	}
	if hdr.Size < 0 {
		return nil, fmt.Errorf("bundle entry %s has a negative size: %w", hdr.Name, ErrMalformed)
	}
	return hdr, nil
}

func readEntry(tr *tar.Reader, name string, limit int64) ([]byte, error) {
	hdr, err := nextHeader(tr, name)
	if err != nil {
		return nil, err
	}
	return readBody(tr, hdr, limit)
}

// readBody reads the entry hdr opened, refusing a size above limit before
// allocating.
func readBody(tr *tar.Reader, hdr *tar.Header, limit int64) ([]byte, error) {
	name := hdr.Name
	if hdr.Size > limit {
		return nil, fmt.Errorf("bundle entry %s declares %d bytes, more than the %d allowed: %w", name, hdr.Size, limit, ErrTooLarge)
	}
	b := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, b); err != nil {
		return nil, fmt.Errorf("bundle ends inside %s: %w", name, ErrTruncated)
	}
	return b, nil
}

// Payload returns the encoded payload as a verified stream: each chunk is
// released only after its bytes match the signed chunk hash, and at the end
// the whole-payload sha256 and the bundle's end (no further entries, no
// trailing data) are checked. Memory: one chunk.
func (b *Bundle) Payload() (io.Reader, error) {
	if b.consumed {
		return nil, errors.New("bundle payload already read")
	}
	b.consumed = true
	return NewChunkVerifier(b.tr, &b.Manifest.Payload, b.finish), nil
}

// finish is called when the payload entry has been read in full: the tar
// stream must end here.
func (b *Bundle) finish() error {
	if _, err := b.tr.Next(); err != io.EOF {
		if err == nil {
			return fmt.Errorf("bundle has an entry after the payload: %w", ErrMalformed)
		}
		return fmt.Errorf("bundle end: %v: %w", err, ErrMalformed)
	}
	// After the end-of-archive marker only zero padding may follow.
	var buf [512]byte
	var total int64
	for {
		n, err := b.src.Read(buf[:])
		for _, c := range buf[:n] {
			if c != 0 {
				return fmt.Errorf("bundle has data after the end of the archive: %w", ErrMalformed)
			}
		}
		total += int64(n)
		if total > 1<<20 {
			return fmt.Errorf("bundle has more than 1 MiB of padding after the archive: %w", ErrMalformed)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("bundle end: %w", err)
		}
	}
}

// Executable returns the decoded executable stream. It wraps Payload: every
// byte has passed the chunk check, and the decoded size and sha256 are
// checked against the manifest; more bytes than declared is an error.
func (b *Bundle) Executable() (io.Reader, error) {
	p, err := b.Payload()
	if err != nil {
		return nil, err
	}
	return DecodePayload(p, b.Manifest)
}

// DecodePayload turns a verified payload stream into the executable stream
// per m.Payload.Encoding, checking m.Executable's size and sha256.
func DecodePayload(payload io.Reader, m *Manifest) (io.Reader, error) {
	var r io.Reader
	switch m.Payload.Encoding {
	case EncodingNone:
		// The executable is the payload, whose every chunk has been
		// checked against its signed hash: only the size is left to check.
		return &sizedHashReader{r: payload, want: m.Executable.Size, what: "executable"}, nil
	case EncodingXZ:
		// The decoder allocates the larger of the configured dictionary
		// and the one the stream's block header declares: check the
		// stream against the signed size first, so a device's memory
		// limit (decided on payload.xz_dict_size) holds.
		br := bufio.NewReaderSize(payload, xzHeadPeek)
		head, _ := br.Peek(xzHeadPeek)
		if err := checkXZDict(head, m.Payload.XZDictSize); err != nil {
			return nil, err
		}
		payload = br
		cfg := xz.ReaderConfig{DictCap: int(m.Payload.XZDictSize)}
		xr, err := cfg.NewReader(payload)
		if err != nil {
			return nil, fmt.Errorf("payload is not a valid xz stream: %v: %w", err, ErrPayloadMismatch)
		}
		r = xr
	case EncodingBSDiff:
		return nil, fmt.Errorf("the payload of %s is a delta from the executable %s: it decodes only against that base (protocol/bsdiff), not on its own: %w", m, short(m.Delta.BaseSHA256), ErrMalformed)
	default:
		return nil, fmt.Errorf("payload encoding %q: %w", m.Payload.Encoding, ErrMalformed)
	}
	return &sizedHashReader{r: r, want: m.Executable.Size, sum: m.Executable.SHA256, h: sha256.New(), what: "executable"}, nil
}

// sizedHashReader passes at most want bytes and, at EOF, checks the count
// and, when h is set, the sha256.
type sizedHashReader struct {
	r    io.Reader
	want int64
	n    int64
	sum  string
	h    hash.Hash
	what string
	err  error
}

func (s *sizedHashReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if rest := s.want - s.n + 1; int64(len(p)) > rest {
		p = p[:rest] // read one byte past the limit to detect overflow
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.n > s.want {
		s.err = fmt.Errorf("%s is longer than the %d bytes the manifest declares: %w", s.what, s.want, ErrPayloadMismatch)
		return 0, s.err
	}
	if s.h != nil {
		s.h.Write(p[:n])
	}
	if err == io.EOF {
		if s.n != s.want {
			s.err = fmt.Errorf("%s is %d bytes, the manifest declares %d: %w", s.what, s.n, s.want, ErrTruncated)
			return n, s.err
		}
		if s.h == nil {
			// size-only check (see DecodePayload)
		} else if got := hex.EncodeToString(s.h.Sum(nil)); got != s.sum {
			s.err = fmt.Errorf("%s sha256 %s, the manifest declares %s: %w", s.what, got, s.sum, ErrPayloadMismatch)
			return n, s.err
		}
		s.err = io.EOF
	} else if err != nil {
		s.err = fmt.Errorf("%s: %w", s.what, err)
		return n, s.err
	}
	return n, err
}

// ChunkVerifier reads an encoded payload and releases it chunk by chunk,
// each only after it matched the signed hash. The signed chunk hashes and
// sizes cover every byte, so they imply payload.sha256 (the payload's
// content address); it is not hashed a second time (SPEC.md §2). It is also what the MQTT
// transport uses to check chunks one at a time (VerifyChunk).
type ChunkVerifier struct {
	r      io.Reader
	p      *Payload
	finish func() error
	buf    []byte
	off    int // read position in buf
	chunk  int // next chunk index to load
	err    error
}

// NewChunkVerifier wraps r, which must yield p.Size bytes. finish, if not
// nil, runs after the last chunk verified (to check what follows).
func NewChunkVerifier(r io.Reader, p *Payload, finish func() error) *ChunkVerifier {
	return &ChunkVerifier{r: r, p: p, finish: finish}
}

func (c *ChunkVerifier) Read(out []byte) (int, error) {
	for c.off >= len(c.buf) {
		if c.err != nil {
			return 0, c.err
		}
		if c.chunk == len(c.p.Chunks) {
			c.err = c.end()
			return 0, c.err
		}
		c.err = c.load()
	}
	n := copy(out, c.buf[c.off:])
	c.off += n
	return n, nil
}

func (c *ChunkVerifier) load() error {
	n := c.p.ChunkLen(c.chunk)
	if int64(cap(c.buf)) < n {
		c.buf = make([]byte, n)
	}
	c.buf = c.buf[:n]
	c.off = 0
	if _, err := io.ReadFull(c.r, c.buf); err != nil {
		c.buf = c.buf[:0]
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Errorf("payload ends inside chunk %d of %d: %w", c.chunk, len(c.p.Chunks), ErrTruncated)
		}
		return fmt.Errorf("payload chunk %d: %w", c.chunk, err)
	}
	if err := VerifyChunk(c.p, c.chunk, c.buf); err != nil {
		c.buf = c.buf[:0]
		return err
	}
	c.chunk++
	return nil
}

func (c *ChunkVerifier) end() error {
	// The source must have nothing more for the payload.
	var one [1]byte
	if n, _ := c.r.Read(one[:]); n > 0 {
		return fmt.Errorf("payload is longer than the %d bytes the manifest declares: %w", c.p.Size, ErrPayloadMismatch)
	}
	if c.finish != nil {
		if err := c.finish(); err != nil {
			return err
		}
	}
	return io.EOF
}

// VerifyChunk checks chunk i's bytes against the signed manifest.
func VerifyChunk(p *Payload, i int, data []byte) error {
	if i < 0 || i >= len(p.Chunks) {
		return fmt.Errorf("chunk %d does not exist (payload has %d): %w", i, len(p.Chunks), ErrMalformed)
	}
	if want := p.ChunkLen(i); int64(len(data)) != want {
		return fmt.Errorf("chunk %d is %d bytes, want %d: %w", i, len(data), want, ErrPayloadMismatch)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != p.Chunks[i] {
		return fmt.Errorf("chunk %d does not match its signed hash: the payload was altered or corrupted: %w", i, ErrPayloadMismatch)
	}
	return nil
}

// xzHeadPeek covers the xz stream header (12 bytes) and the largest block
// header (1024 bytes).
const xzHeadPeek = 12 + 1024

// checkXZDict reads the LZMA2 dictionary size from the first block header
// of an xz stream and refuses one larger than the signed size (rounded up
// to the next size xz can encode, as the writer does). edgefleet's packer
// writes a single block; SPEC.md §4.
func checkXZDict(head []byte, signed int64) error {
	bad := func(why string) error {
		return fmt.Errorf("payload is not a valid xz stream (%s): %w", why, ErrPayloadMismatch)
	}
	if len(head) < 13 || !bytes.Equal(head[:6], []byte{0xFD, '7', 'z', 'X', 'Z', 0}) {
		return bad("no xz stream header")
	}
	b := head[12:]
	if b[0] == 0 {
		return bad("no block")
	}
	size := (int(b[0]) + 1) * 4
	if len(b) < size {
		return bad("short block header")
	}
	b = b[1:size]
	flags := b[0]
	b = b[1:]
	varint := func() (uint64, bool) {
		var v uint64
		for i := 0; i < 9 && i < len(b); i++ {
			v |= uint64(b[i]&0x7f) << (7 * i)
			if b[i]&0x80 == 0 {
				b = b[i+1:]
				return v, true
			}
		}
		return 0, false
	}
	for _, bit := range []byte{0x40, 0x80} { // compressed, uncompressed size
		if flags&bit != 0 {
			if _, ok := varint(); !ok {
				return bad("block header sizes")
			}
		}
	}
	for n := int(flags&3) + 1; n > 0; n-- {
		id, ok1 := varint()
		psize, ok2 := varint()
		if !ok1 || !ok2 || psize > uint64(len(b)) {
			return bad("block header filters")
		}
		props := b[:psize]
		b = b[psize:]
		if id != 0x21 { // not LZMA2 (a BCJ filter, say): no dictionary
			continue
		}
		if len(props) != 1 {
			return bad("LZMA2 properties")
		}
		dict, err := lzma.DecodeDictCap(props[0])
		if err != nil {
			return bad("LZMA2 dictionary size")
		}
		if allowed := roundXZDict(signed); dict > allowed {
			return fmt.Errorf("the xz stream uses a %d-byte dictionary but the signed manifest declares %d (payload.xz_dict_size); the device's decoder memory is decided on the signed value, so the bundle is refused: repack it with edgefleet pack: %w",
				dict, signed, ErrTooLarge)
		}
	}
	return nil
}

func roundXZDict(n int64) int64 {
	d, err := lzma.DecodeDictCap(lzma.EncodeDictCap(n))
	if err != nil {
		return n
	}
	return d
}
