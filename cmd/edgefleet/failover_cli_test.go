package main

import (
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestCLIBrokerFailover: --broker takes several URLs, comma-separated or
// repeated; the first that answers is used, here after a dead one (a real
// broker that was closed); when none answers, the error names each with
// its reason.
func TestCLIBrokerFailover(t *testing.T) {
	dir := t.TempDir()
	pubPath, priv := testkit.Keys(t, dir)
	bundle := rolloutBundle(t, dir, priv, "1.0.0", 1, "linux-amd64")
	gone, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dead := gone.URL()
	gone.Close()
	live, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	for _, args := range [][]string{
		{"--broker", dead + "," + live.URL()},
		{"--broker", dead, "--broker", live.URL()},
	} {
		code, out, errs := runCLI(t, append(append([]string{"publish"}, args...), "--pub", pubPath, bundle)...)
		if code != 0 || !strings.Contains(out, "published hello 1.0.0") {
			t.Fatalf("publish %v with the first broker dead: exit %d\n%s\n%s", args, code, out, errs)
		}
	}
	code, out, errs := runCLI(t, "status", "--broker", dead, "--broker", live.URL())
	if code != 0 || !strings.Contains(out, "0 devices") {
		t.Fatalf("status with the first broker dead: exit %d\n%s\n%s", code, out, errs)
	}
	// None answers: each broker is named with its reason.
	gone2, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dead2 := gone2.URL()
	gone2.Close()
	code, _, errs = runCLI(t, "status", "--broker", dead+","+dead2)
	if code == 0 || !strings.Contains(errs, "any of 2 brokers") || !strings.Contains(errs, dead+": ") || !strings.Contains(errs, dead2+": ") || !strings.Contains(errs, "refused") {
		t.Fatalf("status with every broker dead: exit %d\n%s", code, errs)
	}
	// Bad lists are refused before anything is tried.
	for _, tc := range []struct{ broker, says string }{
		{live.URL() + "," + live.URL(), "given twice"},
		{live.URL() + ",http://x:80", `"http://x:80": want tcp://`},
		{"tcp://:1883", "no host"},
	} {
		code, _, errs := runCLI(t, "status", "--broker", tc.broker)
		if code == 0 || !strings.Contains(errs, tc.says) {
			t.Errorf("--broker %s: exit %d, stderr %q; want it to say %q", tc.broker, code, errs, tc.says)
		}
	}
}
