package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// writeOldFloor writes data_dir/floor.json the way agents before the
// version limit did after installing a 201+ byte version: its first 200
// bytes and "…" (203 bytes), a file those agents then refused to read,
// failing every later install.
func writeOldFloor(t *testing.T, data string, seq uint64) {
	t.Helper()
	long := "1.0.0-" + strings.Repeat("x", 250)
	b, err := json.MarshalIndent(map[string]any{"schema": 1, "apps": map[string]any{
		"hello": map[string]any{"sequence": seq, "version": long[:200] + "…"}}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "floor.json"), append(b, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

func stopDaemon(t *testing.T, dm *daemon) {
	t.Helper()
	dm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-dm.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop on SIGTERM")
	}
}

// A device stuck with such a floor.json recovers when the agent starts
// (the file is rewritten with the version text clipped, the sequence
// kept) and after `edgefleet-agent reset` of a corrupt state database;
// the anti-rollback floor holds throughout. Real agent processes, real
// files.
func TestOverlongFloorVersionRecovers(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	floorPath := filepath.Join(d.data, "floor.json")
	d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "1.0.0", 4, helloBin(t, "1.0.0", "")))
	dm := d.startDaemon(d.cli)
	d.waitStatus("hello 1.0.0 committed", func(st agent.DaemonStatus) bool {
		return app(st, "hello").State == agent.StateCommitted && runningVersion(st, "hello", "1.0.0")
	})
	stopDaemon(t, dm)

	// At start.
	writeOldFloor(t, d.data, 4)
	dm = d.startDaemon(d.cli)
	b, err := os.ReadFile(floorPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Apps map[string]struct {
			Sequence uint64 `json:"sequence"`
			Version  string `json:"version"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if e := f.Apps["hello"]; e.Sequence != 4 || len(e.Version) > 128 {
		t.Fatalf("floor.json after the agent started: sequence %d, version of %d bytes, want 4 and at most 128:\n%s", e.Sequence, len(e.Version), b)
	}
	out := d.mustRun(1, "sideload", "--config", d.cfgPath, d.bundle("hello", "0.9.0", 3, helloBin(t, "0.9.0", "")))
	if !strings.Contains(out, "sequence 3") {
		t.Fatalf("a replayed sequence 3 after the repair:\n%s", out)
	}
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "2.0.0", 5, helloBin(t, "2.0.0", "")))
	if !strings.Contains(out, "trial: committed") {
		t.Fatalf("sideload after the repair:\n%s", out)
	}
	d.waitStatus("hello 2.0.0 running", func(st agent.DaemonStatus) bool { return runningVersion(st, "hello", "2.0.0") })
	stopDaemon(t, dm)

	// With `edgefleet-agent reset` of a corrupt state database: the
	// floor file (the old agents' form again) is all that stops a replay.
	writeOldFloor(t, d.data, 5)
	if err := os.WriteFile(filepath.Join(d.data, "state.db"), bytes.Repeat([]byte("not a bbolt file "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	out = d.mustRun(0, "reset", "--config", d.cfgPath)
	if !strings.Contains(out, "moved to") {
		t.Fatalf("reset output:\n%s", out)
	}
	out = d.mustRun(1, "sideload", "--config", d.cfgPath, filepath.Join(d.dir, "hello-2.0.0.efb"))
	if !strings.Contains(out, "sequence 5") || !strings.Contains(out, "floor is 5") {
		t.Fatalf("a replayed sequence 5 after the reset:\n%s", out)
	}
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "3.0.0", 6, helloBin(t, "3.0.0", "")))
	if !strings.Contains(out, "installed hello 3.0.0 (sequence 6") {
		t.Fatalf("sideload after the reset:\n%s", out)
	}
	if v := versionAt(t, d.hello); v != "3.0.0" {
		t.Fatalf("%s runs %s after the sideload, want 3.0.0", d.hello, v)
	}
}
