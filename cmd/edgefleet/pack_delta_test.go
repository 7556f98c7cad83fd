package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// publish takes a release's deltas along, first, and never twice.
func TestWithDeltas(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"hello_1.1.0_linux-arm64.efb", "hello_1.1.0_linux-arm64.from-1.0.0.efb", "hello_1.1.0_linux-arm64.from-0.9.0.efb",
		"hello_1.1.0_linux-amd64.efb", "hello_1.1.0_linux-armv6.from-1.0.0.efb"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	got := withDeltas([]string{p("hello_1.1.0_linux-arm64.efb"), p("hello_1.1.0_linux-amd64.efb"), p("hello_1.1.0_linux-arm64.from-1.0.0.efb")})
	want := []string{p("hello_1.1.0_linux-arm64.from-0.9.0.efb"), p("hello_1.1.0_linux-arm64.from-1.0.0.efb"), p("hello_1.1.0_linux-arm64.efb"), p("hello_1.1.0_linux-amd64.efb")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("withDeltas = %v, want %v", got, want)
	}
	if n := countDeltaTopics([]string{"edgefleet/v1/delta/hello/a/b", "edgefleet/v1/release/stable/hello/x/manifest"}); n != 1 {
		t.Fatalf("countDeltaTopics = %d", n)
	}
}
