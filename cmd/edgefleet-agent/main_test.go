package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testkit"
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
		{[]string{"sideload", "--config", "/nonexistent/agent.yaml", "a.efb", "b.efb"}, 1},
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

// A device id with '.' works on Mosquitto but NATS refuses it as a client
// id, and the agent then blamed broker.url and the credentials. The id is
// refused when the config loads, by the real agent binary, naming the id
// to use instead (SPEC.md §8.1).
func TestDottedDeviceIDRefusedAtConfigLoad(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	testkit.WriteAgentConfig(t, d.cfgPath, testkit.AgentConfig{DeviceID: "pi.17", DataDir: d.data, TrustedKeys: []string{d.pubPath},
		Broker: "tcp://127.0.0.1:1", Apps: []testkit.AgentApp{{Name: "hello", Path: d.hello}}})
	for _, args := range [][]string{{"run", "--config", d.cfgPath}, {"status", "--config", d.cfgPath}} {
		// An agent that accepts the id runs on: stop it (not a time
		// limit on the refusal; a refusal exits at once).
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, d.cli, args...)
		var se bytes.Buffer
		cmd.Stderr = &se
		err := cmd.Run()
		stopped := ctx.Err() != nil
		cancel()
		if stopped || err == nil {
			t.Fatalf("edgefleet-agent %s accepted device_id pi.17 (%v)\n%s", args[0], err, se.String())
		}
		for _, want := range []string{"device_id", `"pi.17"`, "NATS", `use "pi-17" instead`} {
			if !strings.Contains(se.String(), want) {
				t.Errorf("edgefleet-agent %s: the refusal does not say %s:\n%s", args[0], want, se.String())
			}
		}
	}
	testkit.WriteAgentConfig(t, d.cfgPath, testkit.AgentConfig{DeviceID: "pi-17", DataDir: d.data, TrustedKeys: []string{d.pubPath},
		Broker: "tcp://127.0.0.1:1", Apps: []testkit.AgentApp{{Name: "hello", Path: d.hello}}})
	if _, se, code := d.run("status", "--config", d.cfgPath); code != 0 {
		t.Fatalf("device_id pi-17: exit %d\n%s", code, se)
	}
}

// Every command's -h ends with an example, and flags may follow the
// arguments.
func TestHelpExamplesAndFlagsAnywhere(t *testing.T) {
	for name := range commands {
		_, se, _ := runIn(name, "-h")
		if !strings.Contains(se, "Example:\n  edgefleet-agent "+name) {
			t.Errorf("%s -h has no example:\n%s", name, se)
		}
	}
	if _, se, _ := runIn("help", "sideload"); !strings.Contains(se, "Example:\n  edgefleet-agent sideload") {
		t.Errorf("help sideload:\n%s", se)
	}
	_, se, code := runIn("status", "extra", "--config", "/nonexistent/agent.yaml")
	if code != 2 || !strings.Contains(se, "want 0 argument(s), got 1: extra") {
		t.Errorf("status extra --config: exit %d: %s", code, se)
	}
	_, se, code = runIn("status", "--json", "--config", "/nonexistent/agent.yaml")
	if code != 1 || !strings.Contains(se, "/nonexistent/agent.yaml") {
		t.Errorf("flags in any order: exit %d: %s", code, se)
	}
}
