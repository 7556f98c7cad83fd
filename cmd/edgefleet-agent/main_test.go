package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func runIn(args ...string) (string, string, int) {
	var so, se bytes.Buffer
	code := runMain(context.Background(), &env{stdout: &so, stderr: &se}, args)
	return so.String(), se.String(), code
}

func TestUsageExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"sideload"}, 2},
		{[]string{"sideload", "a.efb", "b.efb"}, 2},
		{[]string{"check"}, 2},
		{[]string{"rollback"}, 2},
		{[]string{"status", "extra"}, 2},
		{[]string{"run", "--no-such-flag"}, 2},
		{[]string{"help"}, 0},
		{[]string{"version"}, 0},
		{[]string{"status", "--config", "/nonexistent/agent.yaml"}, 1},
		{[]string{"sideload", "--config", "/nonexistent/agent.yaml", "x.efb"}, 1},
	} {
		so, se, code := runIn(tc.args...)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\nstdout: %s\nstderr: %s", tc.args, code, tc.code, so, se)
		}
	}
	_, se, _ := runIn("status", "--config", "/nonexistent/agent.yaml")
	if !strings.Contains(se, "/nonexistent/agent.yaml") {
		t.Errorf("missing config error does not name the file: %s", se)
	}
}

func TestFacts(t *testing.T) {
	so, se, code := runIn("facts", "--json")
	if code != 0 {
		t.Fatalf("facts --json: exit %d: %s", code, se)
	}
	var f map[string]any
	if err := json.Unmarshal([]byte(so), &f); err != nil {
		t.Fatalf("facts --json is not JSON: %v\n%s", err, so)
	}
	for _, k := range []string{"cpu", "storage", "memory", "kernel", "machine"} {
		if _, ok := f[k]; !ok {
			t.Errorf("facts --json lacks %q: %s", k, so)
		}
	}
	so, _, code = runIn("facts")
	if code != 0 || !strings.Contains(so, "free on /") {
		t.Fatalf("facts: exit %d\n%s", code, so)
	}
}
