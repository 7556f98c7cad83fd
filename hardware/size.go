package hardware

import (
	"fmt"
	"strconv"
	"strings"
)

// Size is a byte count that reads and writes as "8MiB", "512KiB", "4MB" or
// a plain number of bytes.
type Size int64

var units = []struct {
	suffix string
	mult   int64
}{
	{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3},
	{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
}

// ParseSize parses a size such as "8MiB", "1.5 MB" or "4096".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<50 {
		return 0, fmt.Errorf("size %q: want a number of bytes or a value like 8MiB, 512KiB, 4MB", s)
	}
	return Size(f * float64(mult)), nil
}

// String formats with binary units ("8MiB", "1.5MiB", "700B").
func (s Size) String() string {
	v := int64(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v >= u.mult {
			if v%u.mult == 0 {
				return fmt.Sprintf("%d%s", v/u.mult, u.suffix)
			}
			return fmt.Sprintf("%.1f%s", float64(v)/float64(u.mult), u.suffix)
		}
	}
	return fmt.Sprintf("%dB", v)
}

// UnmarshalYAML accepts a string with units or an integer.
func (s *Size) UnmarshalYAML(unmarshal func(any) error) error {
	var str string
	if err := unmarshal(&str); err != nil {
		return err
	}
	v, err := ParseSize(str)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText writes the String form.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the String form (JSON).
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
