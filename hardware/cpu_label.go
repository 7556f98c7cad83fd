package hardware

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseCPUString reads back what CPUFacts.String printed ("armv6 (vfp)",
// "amd64-v3 (sse4.2, avx2, aes)", "arm64 (asimd, aes)", "mipsle"): the
// CPU a device reports in its status. It recovers what CanRun decides on
// (GOARCH, the ARM and x86-64 levels, and the ARM VFP bits); HWCAP bits
// other than VFP, AT_PLATFORM and the full feature list are not in the
// string. The input is untrusted (a device writes it): anything that is
// not of that form is an error, never a guess.
func ParseCPUString(s string) (CPUFacts, error) {
	bad := func() (CPUFacts, error) {
		return CPUFacts{}, fmt.Errorf("CPU %q is not of the form an agent reports (armv6 (vfp), amd64-v3, arm64, mipsle)", clipLabel(s))
	}
	if len(s) > 200 {
		return bad()
	}
	label, rest, hasFeatures := strings.Cut(s, " ")
	var features []string
	if hasFeatures {
		inner, open := strings.CutPrefix(rest, "(")
		inner, closed := strings.CutSuffix(inner, ")")
		if !open || !closed || inner == "" {
			return bad()
		}
		for _, f := range strings.Split(inner, ", ") {
			if f == "" || strings.ContainsAny(f, " (),") {
				return bad()
			}
			features = append(features, f)
		}
	}
	var c CPUFacts
	switch {
	case strings.HasPrefix(label, "armv"):
		n, err := strconv.Atoi(label[len("armv"):])
		if err != nil || n < 5 || n > 7 || label != "armv"+strconv.Itoa(n) {
			return bad()
		}
		c = CPUFacts{GOARCH: "arm", ARMLevel: n}
		if n >= 6 {
			c.HWCAP |= HWCAP_ARM_VFP
		}
		if n >= 7 {
			c.HWCAP |= HWCAP_ARM_VFPv3
		}
	case strings.HasPrefix(label, "amd64-v"):
		n, err := strconv.Atoi(label[len("amd64-v"):])
		if err != nil || n < 1 || n > 4 || label != "amd64-v"+strconv.Itoa(n) {
			return bad()
		}
		c = CPUFacts{GOARCH: "amd64", AMD64Level: n}
	default:
		if _, known := elfFor(label); !known || label == "arm" || label == "amd64" {
			return bad()
		}
		c = CPUFacts{GOARCH: label}
	}
	// Only the headline features, in their order, are ever printed.
	next := 0
	for _, f := range features {
		for next < len(headline[c.GOARCH]) && headline[c.GOARCH][next] != f {
			next++
		}
		if next == len(headline[c.GOARCH]) {
			return bad()
		}
		next++
	}
	c.Features = features
	return c, nil
}

// CPUFactsFor is the least capable CPU that profile p's builds run on
// (an armv6 profile: ARMv6 with VFP), for a device that reports its
// profile but not its CPU.
func CPUFactsFor(p Profile) (CPUFacts, error) {
	t := TargetFor(p)
	c := CPUFacts{GOARCH: p.GOARCH}
	switch p.GOARCH {
	case "arm":
		n, err := goarmLevel(t.GOARM)
		if err != nil {
			return CPUFacts{}, err
		}
		c.ARMLevel = n
		if n >= 6 {
			c.HWCAP |= HWCAP_ARM_VFP
		}
		if n >= 7 {
			c.HWCAP |= HWCAP_ARM_VFPv3
		}
	case "amd64":
		n, err := goamd64Level(t.GOAMD64)
		if err != nil {
			return CPUFacts{}, err
		}
		c.AMD64Level = n
	}
	return c, nil
}

func clipLabel(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
