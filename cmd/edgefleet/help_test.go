package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// Every command's -h ends with an example (and the rollout subcommands').
func TestEveryCommandHelpHasExample(t *testing.T) {
	var names [][]string
	for n := range commands {
		subs := map[string][]string{
			"rollout": {"start", "status", "pause", "resume", "abort", "drive"},
			"root":    {"init"},
			"keyset":  {"new", "sign", "chain", "verify", "publish"},
		}
		if list, ok := subs[n]; ok {
			for _, sub := range list {
				names = append(names, []string{n, sub})
			}
			continue
		}
		names = append(names, []string{n})
	}
	for _, n := range names {
		var out, errb bytes.Buffer
		env := &cliEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
		run(context.Background(), env, append(n, "-h"))
		if got := out.String() + errb.String(); !strings.Contains(got, "Example:\n  edgefleet "+strings.Join(n, " ")) {
			t.Errorf("edgefleet %s -h has no example:\n%s", strings.Join(n, " "), got)
		}
	}
}
