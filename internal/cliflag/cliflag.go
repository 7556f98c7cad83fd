// Package cliflag lets the standard library's flag package take flags
// after the arguments, as kubectl, gh and docker do (`pack ./cmd/x --key
// k`), and names missing required flags. Both edgefleet and the device
// agent parse through it, so both behave alike.
//
// Why not a flag library (spf13/pflag): its value is GNU-style -abc
// clusters and --long-only names, which would change how every existing
// command line, script and document spells single-dash long flags
// (-json, -config); and the agent's size is watched (internal/policy). What
// users asked for, flags anywhere, is this one reordering pass.
//
// It only reorders the command line it is given; it never reads input
// from the network. A "--" ends the flags: everything after it is an
// argument, even when it starts with a dash.
package cliflag

import (
	"flag"
	"fmt"
	"strings"
)

// Interspersed returns args with every flag (and the value of a non-bool
// flag given as a separate word) moved before the positional arguments,
// followed by "--" and the positional arguments in their order, ready for
// fs.Parse. Unknown flags are kept in place for fs.Parse to report.
func Interspersed(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	return append(append(flags, "--"), pos...)
}

// Parse parses args into fs with flags allowed after the arguments.
func Parse(fs *flag.FlagSet, args []string) error {
	return fs.Parse(Interspersed(fs, args))
}

// Missing returns an error naming every flag in names (without dashes)
// whose value is still empty or zero ("missing --key, --version
// (required)"), nil when all are set.
func Missing(fs *flag.FlagSet, names ...string) error {
	var miss []string
	for _, n := range names {
		f := fs.Lookup(n)
		if f == nil {
			panic("cliflag: no flag " + n)
		}
		if v := f.Value.String(); v == "" || v == "0" || v == "[]" {
			miss = append(miss, Dashed(n))
		}
	}
	if len(miss) == 0 {
		return nil
	}
	return fmt.Errorf("missing %s (required)", strings.Join(miss, ", "))
}

// Dashed spells a flag name as users type it: -o, --key.
func Dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}
