//go:build linux

package hardware

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReadStorage measures the filesystem that holds path with statfs(2).
// When path does not exist yet, the nearest existing parent is measured:
// that is where a file created at path would land. Field widths differ per
// architecture (int32 f_frsize on linux/arm and mipsle); all are converted
// to int64 here.
func ReadStorage(path string) (StorageFacts, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return StorageFacts{}, fmt.Errorf("storage of %s: %w", path, err)
	}
	dir := abs
	var st unix.Statfs_t
	for {
		err = unix.Statfs(dir, &st)
		if !errors.Is(err, unix.ENOENT) || dir == filepath.Dir(dir) {
			break
		}
		dir = filepath.Dir(dir)
	}
	if err != nil {
		return StorageFacts{}, fmt.Errorf("storage of %s: statfs %s: %w", path, dir, err)
	}
	frsize := int64(st.Frsize)
	if frsize <= 0 { // kernels before 2.6 leave f_frsize 0; f_bsize is the unit then
		frsize = int64(st.Bsize)
	}
	return StorageFacts{
		Path:  path,
		Free:  mulClamp(uint64(st.Bavail), frsize),
		Total: mulClamp(uint64(st.Blocks), frsize),
	}, nil
}

// ReadMemory reads MemTotal and MemAvailable from /proc/meminfo, falling
// back to sysinfo(2) where /proc is unavailable or the kernel predates
// MemAvailable (3.14).
func ReadMemory() (MemoryFacts, error) {
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if m, ok := parseMeminfo(b); ok {
			return m, nil
		}
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return MemoryFacts{}, fmt.Errorf("memory: /proc/meminfo unreadable and sysinfo failed: %w", err)
	}
	unit := int64(si.Unit)
	if unit == 0 {
		unit = 1
	}
	return MemoryFacts{
		Total:     mulClamp(uint64(si.Totalram), unit),
		Available: mulClamp(uint64(si.Freeram)+uint64(si.Bufferram), unit),
	}, nil
}

// parseMeminfo reads the kB values of MemTotal and MemAvailable.
func parseMeminfo(b []byte) (MemoryFacts, bool) {
	var m MemoryFacts
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseUint(f[0], 10, 63)
		if err != nil {
			continue
		}
		switch key {
		case "MemTotal":
			m.Total, haveTotal = mulClamp(v, 1024), true
		case "MemAvailable":
			m.Available, haveAvail = mulClamp(v, 1024), true
		}
	}
	return m, haveTotal && haveAvail
}

// ReadFacts reads everything Facts holds; storage for each of paths. A
// failure to read one part is returned (joined) with whatever else was read.
func ReadFacts(paths ...string) (Facts, error) {
	var f Facts
	var errs []error
	var err error
	if f.CPU, err = ReadCPU(); err != nil {
		errs = append(errs, err)
	}
	for _, p := range paths {
		s, err := ReadStorage(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.Storage = append(f.Storage, s)
	}
	if f.Memory, err = ReadMemory(); err != nil {
		errs = append(errs, err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		errs = append(errs, fmt.Errorf("uname: %w", err))
	} else {
		f.Kernel = unix.ByteSliceToString(u.Release[:])
		f.Machine = unix.ByteSliceToString(u.Machine[:])
	}
	return f, errors.Join(errs...)
}
