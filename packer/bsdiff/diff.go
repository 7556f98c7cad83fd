package bsdiff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/dsnet/compress/bzip2"
)

// Options choose the bzip2 block-size levels of the patch streams. Each
// level costs a device's decoder 400 KB per stream while it applies.
type Options struct {
	// ControlLevel is the bzip2 level of the control stream (small);
	// zero means 1.
	ControlLevel int
	// DataLevel is the bzip2 level of the diff and extra streams; zero
	// means DefaultDataLevel.
	DataLevel int
}

// DefaultDataLevel is the bzip2 level of the diff and extra streams: 5
// (500 KB blocks). Measured on the 8 MB agent, a small change gives the
// same patch as level 9 (bsdiff's) while the device's decoders allocate
// 4.4 MiB instead of 7.4 MiB; level 1 costs 12 % more bytes.
const DefaultDataLevel = 5

// MaxLevel is the highest bzip2 level the streams of a patch made with o
// declare (the delta manifest's max_bzip2_level).
func (o Options) MaxLevel() int {
	o = o.withDefaults()
	return max(o.ControlLevel, o.DataLevel)
}

func (o Options) withDefaults() Options {
	if o.ControlLevel <= 0 {
		o.ControlLevel = 1
	}
	if o.DataLevel <= 0 {
		o.DataLevel = DefaultDataLevel
	}
	return o
}

// Stats describe a patch that Diff made.
type Stats struct {
	ControlEntries int64
	CtrlLen        int64
	DiffLen        int64
	ExtraLen       int64
	// ExtraBytes is the number of result bytes not derived from the base.
	ExtraBytes int64
}

// Diff returns a BSDIFF40 patch that turns oldb into newb.
func Diff(oldb, newb []byte, opts Options) ([]byte, Stats, error) {
	opts = opts.withDefaults()
	var st Stats
	if len(oldb) >= 1<<31-1 || len(newb) >= 1<<31-1 {
		return nil, st, fmt.Errorf("bsdiff: inputs of %d and %d bytes: at most 2^31-2 each", len(oldb), len(newb))
	}
	I := qsufsort(oldb)
	db := make([]byte, 0, len(newb))
	eb := make([]byte, 0, len(newb)/8)
	var ctrl bytes.Buffer
	var cb [24]byte

	var scan, pos, length int
	var lastscan, lastpos, lastoffset int
	for scan < len(newb) {
		var oldscore int
		scan += length
		for scsc := scan; scan < len(newb); scan++ {
			pos, length = search(I, oldb, newb[scan:])
			for ; scsc < scan+length; scsc++ {
				if scsc+lastoffset < len(oldb) && oldb[scsc+lastoffset] == newb[scsc] {
					oldscore++
				}
			}
			if (length == oldscore && length != 0) || length > oldscore+8 {
				break
			}
			if scan+lastoffset < len(oldb) && oldb[scan+lastoffset] == newb[scan] {
				oldscore--
			}
		}
		if length != oldscore || scan == len(newb) {
			var s, sf, lenf int
			for i := 0; lastscan+i < scan && lastpos+i < len(oldb); {
				if oldb[lastpos+i] == newb[lastscan+i] {
					s++
				}
				i++
				if s*2-i > sf*2-lenf {
					sf = s
					lenf = i
				}
			}
			lenb := 0
			if scan < len(newb) {
				var s, sb int
				for i := 1; scan >= lastscan+i && pos >= i; i++ {
					if oldb[pos-i] == newb[scan-i] {
						s++
					}
					if s*2-i > sb*2-lenb {
						sb = s
						lenb = i
					}
				}
			}
			if lastscan+lenf > scan-lenb {
				overlap := (lastscan + lenf) - (scan - lenb)
				var s, ss, lens int
				for i := 0; i < overlap; i++ {
					if newb[lastscan+lenf-overlap+i] == oldb[lastpos+lenf-overlap+i] {
						s++
					}
					if newb[scan-lenb+i] == oldb[pos-lenb+i] {
						s--
					}
					if s > ss {
						ss = s
						lens = i + 1
					}
				}
				lenf += lens - overlap
				lenb -= lens
			}
			for i := 0; i < lenf; i++ {
				db = append(db, newb[lastscan+i]-oldb[lastpos+i])
			}
			ext := (scan - lenb) - (lastscan + lenf)
			eb = append(eb, newb[lastscan+lenf:lastscan+lenf+ext]...)

			offtout(cb[0:], int64(lenf))
			offtout(cb[8:], int64(ext))
			offtout(cb[16:], int64((pos-lenb)-(lastpos+lenf)))
			ctrl.Write(cb[:])
			st.ControlEntries++

			lastscan = scan - lenb
			lastpos = pos - lenb
			lastoffset = pos - scan
		}
	}
	st.ExtraBytes = int64(len(eb))
	return assemble(ctrl.Bytes(), db, eb, int64(len(newb)), opts, st)
}

// Control is one (add, copy, seek) triple of a patch.
type Control struct{ Add, Copy, Seek int64 }

// Assemble writes a patch from explicit control entries and diff and extra
// blocks, whatever they say: tests use it to make hostile patches, and the
// spec's test vector is made with it. newSize goes into the header as is.
func Assemble(ctrl []Control, diff, extra []byte, newSize int64, opts Options) ([]byte, error) {
	var cb bytes.Buffer
	var b [24]byte
	for _, c := range ctrl {
		offtout(b[0:], c.Add)
		offtout(b[8:], c.Copy)
		offtout(b[16:], c.Seek)
		cb.Write(b[:])
	}
	p, _, err := assemble(cb.Bytes(), diff, extra, newSize, opts.withDefaults(), Stats{ControlEntries: int64(len(ctrl)), ExtraBytes: int64(len(extra))})
	return p, err
}

func assemble(ctrl, db, eb []byte, newSize int64, opts Options, st Stats) ([]byte, Stats, error) {
	var out bytes.Buffer
	out.Write(make([]byte, 32))
	for i, part := range []struct {
		b     []byte
		level int
		n     *int64
	}{{ctrl, opts.ControlLevel, &st.CtrlLen}, {db, opts.DataLevel, &st.DiffLen}, {eb, opts.DataLevel, &st.ExtraLen}} {
		before := out.Len()
		if err := compress(&out, part.b, part.level); err != nil {
			return nil, st, fmt.Errorf("bsdiff: compress stream %d: %w", i, err)
		}
		*part.n = int64(out.Len() - before)
	}
	p := out.Bytes()
	copy(p, "BSDIFF40")
	offtout(p[8:], st.CtrlLen)
	offtout(p[16:], st.DiffLen)
	offtout(p[24:], newSize)
	return p, st, nil
}

func compress(w io.Writer, b []byte, level int) error {
	zw, err := bzip2.NewWriter(w, &bzip2.WriterConfig{Level: level})
	if err != nil {
		return err
	}
	if _, err := zw.Write(b); err != nil {
		return err
	}
	return zw.Close()
}

// offtout encodes bsdiff's sign-magnitude little-endian int64.
func offtout(b []byte, v int64) {
	u := uint64(v)
	if v < 0 {
		u = uint64(-v) | 1<<63
	}
	binary.LittleEndian.PutUint64(b, u)
}

func matchlen(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// search finds the longest match of nbuf among the suffixes of obuf.
func search(I []int32, obuf, nbuf []byte) (pos, n int) {
	st, en := 0, len(obuf)
	for en-st >= 2 {
		x := st + (en-st)/2
		if bytes.Compare(obuf[I[x]:], nbuf) < 0 {
			st = x
		} else {
			en = x
		}
	}
	x := matchlen(obuf[I[st]:], nbuf)
	y := matchlen(obuf[I[en]:], nbuf)
	if x > y {
		return int(I[st]), x
	}
	return int(I[en]), y
}
