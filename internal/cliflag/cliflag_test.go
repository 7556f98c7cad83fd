package cliflag

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
)

func newSet() (*flag.FlagSet, *string, *bool, *string) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	key := fs.String("key", "", "")
	js := fs.Bool("json", false, "")
	out := fs.String("o", "", "")
	return fs, key, js, out
}

func TestFlagsAfterArguments(t *testing.T) {
	for _, args := range [][]string{
		{"--key", "k", "-o", "d", "--json", "a", "b"},
		{"a", "--key", "k", "b", "-o", "d", "--json"},
		{"a", "b", "--key=k", "-json", "-o=d"},
		{"a", "--json=true", "b", "-key", "k", "-o", "d"},
	} {
		fs, key, js, out := newSet()
		if err := Parse(fs, args); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if *key != "k" || !*js || *out != "d" || !reflect.DeepEqual(fs.Args(), []string{"a", "b"}) {
			t.Errorf("%q: key %q json %v o %q args %q", args, *key, *js, *out, fs.Args())
		}
	}
}

func TestDoubleDashEndsFlags(t *testing.T) {
	fs, key, _, _ := newSet()
	if err := Parse(fs, []string{"--key", "k", "--", "--not-a-flag", "-"}); err != nil {
		t.Fatal(err)
	}
	if *key != "k" || !reflect.DeepEqual(fs.Args(), []string{"--not-a-flag", "-"}) {
		t.Errorf("key %q args %q", *key, fs.Args())
	}
}

func TestUnknownFlagStillRefused(t *testing.T) {
	fs, _, _, _ := newSet()
	if err := Parse(fs, []string{"a", "--nope"}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v, want the unknown flag named", err)
	}
}

func TestMissingNamesFlags(t *testing.T) {
	fs, _, _, _ := newSet()
	Parse(fs, []string{"--json"})
	err := Missing(fs, "key", "o")
	if err == nil || err.Error() != "missing --key, -o (required)" {
		t.Fatalf("err = %v", err)
	}
	Parse(fs, []string{"--key", "k", "-o", "d"})
	if err := Missing(fs, "key", "o"); err != nil {
		t.Fatal(err)
	}
}

// Interspersed only reorders: every word is kept, one "--" is added (or an
// existing one moved).
func FuzzInterspersed(f *testing.F) {
	f.Add("a --key k -o d --json b")
	f.Add("-- --key")
	f.Fuzz(func(t *testing.T, line string) {
		fs, _, _, _ := newSet()
		args := strings.Fields(line)
		out := Interspersed(fs, args)
		if len(out) != len(args)+1 && !(len(out) == len(args) && containsDash(args)) {
			t.Fatalf("%q -> %q: words lost or added", args, out)
		}
	})
}

func containsDash(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return true
		}
	}
	return false
}
