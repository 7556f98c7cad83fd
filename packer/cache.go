package packer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The pack cache is content addressed, like go build's: an entry's key is
// the sha256 of everything that determines its content, so a hit can only
// return what the step would have produced. Three kinds of entries:
//
//	xz     the encoded payload of an executable:
//	       key = sha256(executable) + encoding + dictionary size + xz library version
//	upx    the upx output of an executable (stored only after upx -t passed):
//	       key = sha256(input) + upx version line + sha256(upx program) + args
//	probe  a probe that passed (failures are never stored):
//	       key = sha256(executable) + qemu program + its version line + CPU model + args + expect
//	tool   the first line of `<program> --version` (and the program's
//	       sha256 for upx), keyed by the program file's path, device, inode,
//	       size, mtime and ctime, so a warm pack starts no tool
//
// Layout: <dir>/<kind>/<key[:2]>/<key>. Each entry is one file: a fixed
// header line "efpc1 <sha256 of body> <body size>\n" and the body. Writes go
// to a temporary file in the same directory, then rename, so a reader sees
// a whole entry or none; a reader checks the body's size and sha256 while it
// copies and ignores (and the pack rewrites) an entry that does not match.
// Hits refresh the entry's mtime at most once an hour; trim removes the
// least recently used entries past Options.CacheMaxBytes, at most once an
// hour and at most once per pack.

// cacheSchema changes whenever the meaning of a key or an entry changes.
const cacheSchema = "edgefleet-pack-cache 1"

const (
	cacheMagic     = "efpc1"
	cacheHeaderLen = len(cacheMagic) + 1 + 64 + 1 + 20 + 1 // fixed, so put can write it last
	// cacheTouchAge: a hit older than this gets its mtime refreshed, so
	// trim sees recent use without a write per hit.
	cacheTouchAge = time.Hour
	// cacheTrimEvery: trim walks the cache at most this often.
	cacheTrimEvery = time.Hour
	cacheTrimStamp = "trim.txt"
)

// Cache entry kinds.
const (
	cacheXZ    = "xz"
	cacheUPX   = "upx"
	cacheProbe = "probe"
	cacheTool  = "tool" // what `<program> --version` said, by program file identity
)

// errCacheCorrupt: an entry's header, size or sha256 does not match.
var errCacheCorrupt = errors.New("pack cache entry is corrupt")

type cache struct {
	dir string
	max int64
}

// openCache creates the cache directory. A cache that cannot be created
// is not an error for the pack: it runs without one.
func openCache(dir string, max int64) (*cache, error) {
	if dir == "" {
		return nil, errors.New("no cache directory")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &cache{dir: dir, max: max}, nil
}

// cacheKey hashes the parts that determine an entry's content.
func cacheKey(kind string, parts ...string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s", cacheSchema, kind)
	for _, p := range parts {
		fmt.Fprintf(h, "\x00%d:%s", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (c *cache) path(kind, key string) string {
	return filepath.Join(c.dir, kind, key[:2], key)
}

// get copies the body of entry (kind, key) to w, checking its size and
// sha256 on the way. It returns false without error when there is no
// entry, and errCacheCorrupt (after w got some bytes) when the entry does
// not match its header: the caller must discard what w received.
func (c *cache) get(kind, key string, w io.Writer) (bool, error) {
	path := c.path(kind, key)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 256<<10)
	hdr := make([]byte, cacheHeaderLen)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return false, fmt.Errorf("%s: short header: %w", path, errCacheCorrupt)
	}
	wantSum, wantSize, ok := parseCacheHeader(hdr)
	if !ok {
		return false, fmt.Errorf("%s: bad header: %w", path, errCacheCorrupt)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(br, wantSize+1))
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if n != wantSize || hex.EncodeToString(h.Sum(nil)) != wantSum {
		return false, fmt.Errorf("%s: body does not match its size and sha256: %w", path, errCacheCorrupt)
	}
	if fi, err := f.Stat(); err == nil && time.Since(fi.ModTime()) > cacheTouchAge {
		now := time.Now()
		os.Chtimes(path, now, now) // best effort: only trim order depends on it
	}
	return true, nil
}

func parseCacheHeader(hdr []byte) (sum string, size int64, ok bool) {
	f := strings.Fields(string(hdr))
	if len(f) != 3 || f[0] != cacheMagic || len(f[1]) != 64 || hdr[len(hdr)-1] != '\n' {
		return "", 0, false
	}
	if _, err := hex.DecodeString(f[1]); err != nil {
		return "", 0, false
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || n < 0 {
		return "", 0, false
	}
	return f[1], n, true
}

// getFile copies entry (kind, key) to a new file at dst (mode perm). On a
// miss or a corrupt entry dst does not exist afterwards; corrupt reports
// that an entry was there but did not verify.
func (c *cache) getFile(kind, key, dst string, perm os.FileMode) (hit, corrupt bool) {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm)
	if err != nil {
		return false, false
	}
	bw := bufio.NewWriterSize(f, 256<<10)
	hit, err = c.get(kind, key, bw)
	if hit {
		if err = bw.Flush(); err == nil {
			err = f.Close()
		} else {
			f.Close()
		}
		if err == nil {
			return true, false
		}
	} else {
		f.Close()
	}
	os.Remove(dst)
	return false, errors.Is(err, errCacheCorrupt)
}

// put stores the content of r as entry (kind, key), atomically.
func (c *cache) put(kind, key string, r io.Reader) error {
	path := c.path(kind, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+key[:8]+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this finds nothing
	if err := writeCacheEntry(tmp, r); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func writeCacheEntry(f *os.File, r io.Reader) error {
	// The header has a fixed length: write a placeholder, stream the body
	// through the hash, then write the real header over it.
	if _, err := f.Write(bytes.Repeat([]byte{' '}, cacheHeaderLen)); err != nil {
		return err
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(f, 256<<10)
	n, err := io.Copy(io.MultiWriter(bw, h), r)
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	hdr := fmt.Sprintf("%s %s %020d\n", cacheMagic, hex.EncodeToString(h.Sum(nil)), n)
	if len(hdr) != cacheHeaderLen {
		return fmt.Errorf("cache header length %d, want %d", len(hdr), cacheHeaderLen)
	}
	_, err = f.WriteAt([]byte(hdr), 0)
	return err
}

// putFile stores the file at src as entry (kind, key).
func (c *cache) putFile(kind, key, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return c.put(kind, key, bufio.NewReaderSize(f, 256<<10))
}

// trimIfDue removes the least recently used entries until the cache holds
// at most c.max bytes, and stray temporary files older than an hour. It
// walks the cache at most once per cacheTrimEvery (one stat otherwise).
func (c *cache) trimIfDue(now time.Time) error {
	stamp := filepath.Join(c.dir, cacheTrimStamp)
	if fi, err := os.Stat(stamp); err == nil && now.Sub(fi.ModTime()) < cacheTrimEvery && !fi.ModTime().After(now) {
		return nil
	}
	if err := os.WriteFile(stamp, []byte(now.UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return err
	}
	return c.trim(now)
}

type cacheFile struct {
	path  string
	size  int64
	mtime time.Time
}

// trim removes entries, oldest mtime first, until at most c.max bytes
// remain.
func (c *cache) trim(now time.Time) error {
	var files []cacheFile
	var total int64
	for _, kind := range []string{cacheXZ, cacheUPX, cacheProbe, cacheTool} {
		err := filepath.WalkDir(filepath.Join(c.dir, kind), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return nil // removed meanwhile
			}
			if strings.HasPrefix(d.Name(), ".tmp-") {
				if now.Sub(fi.ModTime()) > time.Hour {
					os.Remove(path) // a pack that died mid-write
				}
				return nil
			}
			files = append(files, cacheFile{path, fi.Size(), fi.ModTime()})
			total += fi.Size()
			return nil
		})
		if err != nil {
			return err
		}
	}
	if total <= c.max {
		return nil
	}
	sort.Slice(files, func(a, b int) bool { return files[a].mtime.Before(files[b].mtime) })
	for _, f := range files {
		if total <= c.max {
			break
		}
		if err := os.Remove(f.path); err == nil || errors.Is(err, fs.ErrNotExist) {
			total -= f.size
		}
	}
	return nil
}

// toolID is what the cache keys record about an external program.
type toolID struct {
	version string // first line of `<tool> --version`
	sum     string // sha256 of the program file, when asked for
}

// toolIDs remembers tool identities per process, keyed by the program
// file's identity (see toolFileID), so a replaced program is asked again.
var toolIDs sync.Map // string -> toolID

// toolFileID identifies a program file: path, device, inode, size, mtime
// and ctime. Replacing or touching the file changes it (ctime cannot be
// set back).
func toolFileID(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	id := fmt.Sprintf("%s\x00%d\x00%d", path, fi.Size(), fi.ModTime().UnixNano())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id += fmt.Sprintf("\x00%d\x00%d\x00%d.%d", st.Dev, st.Ino, st.Ctim.Sec, st.Ctim.Nsec)
	}
	return id, nil
}

// identifyTool returns the first line of `path --version` and, with
// withSum, the sha256 of the program file. It asks once per process per
// program file, and with a cache once per program file: the answer is
// stored as a "tool" entry keyed by the file's identity.
func identifyTool(ctx context.Context, c *cache, path string, withSum bool) (toolID, error) {
	fid, err := toolFileID(path)
	if err != nil {
		return toolID{}, err
	}
	memo := fmt.Sprintf("%s\x00%v", fid, withSum)
	if v, ok := toolIDs.Load(memo); ok {
		return v.(toolID), nil
	}
	key := cacheKey(cacheTool, memo)
	if c != nil {
		var b bytes.Buffer
		if hit, _ := c.get(cacheTool, key, &b); hit {
			if v, sum, ok := strings.Cut(b.String(), "\n"); ok && v != "" && strings.HasSuffix(sum, "\n") {
				id := toolID{version: v, sum: strings.TrimSuffix(sum, "\n")}
				toolIDs.Store(memo, id)
				return id, nil
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return toolID{}, fmt.Errorf("%s --version: %w", path, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	id := toolID{version: strings.TrimSpace(line)}
	if id.version == "" {
		return toolID{}, fmt.Errorf("%s --version printed nothing", path)
	}
	if withSum {
		if id.sum, _, err = hashFile(path); err != nil {
			return toolID{}, err
		}
	}
	toolIDs.Store(memo, id)
	if c != nil {
		c.put(cacheTool, key, strings.NewReader(id.version+"\n"+id.sum+"\n")) // best effort
	}
	return id, nil
}

// xzVersion is the version of the xz encoder linked into this program, from
// its build info ("unknown" when the build has none).
var xzVersion = sync.OnceValue(func() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/ulikunitz/xz" {
				if d.Replace != nil {
					d = d.Replace
				}
				return d.Path + "@" + d.Version + " " + d.Sum
			}
		}
	}
	return "unknown"
})

// hashFile returns the hex sha256 and size of the file at path.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
