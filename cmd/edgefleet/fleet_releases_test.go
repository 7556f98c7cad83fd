package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// TestReleasesAndStatusSelect: `releases` lists channel releases,
// rollouts, assignments and malformed messages (table and JSON);
// `status --select` filters by labels, shows them and marks assigned
// devices.
func TestReleasesAndStatusSelect(t *testing.T) {
	f := newOpsFleet(t)
	amd := f.bundle("", "hello", "1.0.0", 1, "linux-amd64")
	arm := f.bundle("", "hello", "1.0.0", 1, "linux-arm64")
	if code, _, errs := f.run("publish", "--broker", "URL", "--pub", "PUB", "--quiet", amd, arm); code != 0 {
		t.Fatal(errs)
	}
	f.status(protocol.DeviceStatus{Device: "gw-1", CPU: "amd64-v3 (avx2)", Profile: "linux-amd64", Labels: protocol.Labels{"site": "berlin", "hw": "rev2"},
		Apps: []protocol.AppReport{{App: "hello", Version: "0.9.0", Sequence: 1, State: "committed"}}})
	f.status(protocol.DeviceStatus{Device: "gw-2", CPU: "amd64-v1", Labels: protocol.Labels{"site": "paris"},
		Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", Sequence: 1, State: "committed"}}})
	f.status(protocol.DeviceStatus{Device: "gw-3", CPU: "amd64-v1", Labels: protocol.Labels{"site": "berlin"},
		Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", Sequence: 1, State: "committed"}}})
	for _, d := range []string{"gw-1", "gw-3"} {
		if code, _, errs := f.run("assign", "--broker", "URL", "--pub", "PUB", "--quiet", "--device", d, amd); code != 0 {
			t.Fatal(errs)
		}
	}
	// A rollout control message and a malformed release envelope.
	c := connectOp(t, f.url)
	ro := &protocol.Rollout{Schema: 1, ID: "hello-2-ab", Channel: "stable", App: "hello", Version: "1.1.0", Sequence: 2,
		Profiles: []string{"linux-amd64"}, Waves: []protocol.Wave{{Count: 1}, {Percent: 100}}, MaxFailures: 0.1, MinExecuted: 1,
		State: protocol.RolloutHalted, Cuts: []uint64{5}, Cut: 5, WaveStarted: []time.Time{time.Now().UTC()},
		Reason: "halted in wave 1: 1 of 1 devices failed", Counts: protocol.RolloutCounts{Selected: 3, Members: 1, Failed: 1},
		Created: time.Now().UTC(), Updated: time.Now().UTC()}
	raw, err := ro.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c.Publish("edgefleet/v1/rollout/stable/hello", 1, true, raw).Wait()
	c.Publish("edgefleet/v1/release/beta/hello/linux-amd64/manifest", 1, true, []byte(`{"schema":1}`)).Wait()
	c.Disconnect(100)

	code, out, errs := f.run("releases", "--broker", "URL", "--pub", "PUB")
	if code != 0 {
		t.Fatalf("releases: %d\n%s", code, errs)
	}
	for _, re := range []string{
		`(?m)^stable +hello +1\.0\.0 +1 +linux-amd64 +19\.5 KiB +5 +verified$`,
		`(?m)^stable +hello +1\.0\.0 +1 +linux-arm64 +19\.5 KiB +5 +verified$`,
		`(?m)^hello-2-ab +stable +hello +1\.1\.0 +2 +halted +1/2 +0/1/0 of 1 \(3\) +halted in wave 1: 1 of 1 devices failed$`,
		`(?m)^gw-1 +hello +1\.0\.0 +1 +linux-amd64 `,
		`(?m)^gw-3 +hello +1\.0\.0 +1 +linux-amd64 `,
		`1 malformed messages`,
		`edgefleet/v1/release/beta/hello/linux-amd64/manifest: release envelope`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("releases table lacks %s:\n%s", re, out)
		}
	}
	code, out, _ = f.run("releases", "--broker", "URL", "--json")
	var rep fleet.CatalogReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil {
		t.Fatalf("releases --json: %d %v\n%s", code, err, out)
	}
	if len(rep.Releases) != 2 || rep.Releases[0].Chunks != 5 || rep.Releases[0].Signature != "not checked" ||
		len(rep.Assignments) != 2 || rep.Assignments[0].Device != "gw-1" ||
		len(rep.Rollouts) != 1 || rep.Rollouts[0].State != "halted" || rep.Rollouts[0].Counts.Failed != 1 || len(rep.Malformed) != 1 {
		t.Errorf("releases --json: %+v", rep)
	}

	code, out, errs = f.run("status", "--broker", "URL", "--select", "site=berlin")
	if code != 0 {
		t.Fatalf("status --select: %d\n%s", code, errs)
	}
	if strings.Contains(out, "gw-2") || !regexp.MustCompile(`(?m)^gw-1 +linux-amd64 +hw=rev2,site=berlin +hello +0\.9\.0 \(assigned 1\.0\.0\) +committed`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^gw-3 +- +site=berlin +hello +1\.0\.0 \(assigned\) +committed`).MatchString(out) ||
		!strings.Contains(out, "2 devices, 0 offline") {
		t.Errorf("status --select site=berlin:\n%s", out)
	}
	code, out, _ = f.run("status", "--broker", "URL", "--select", "site=berlin,hw=rev2", "--json")
	var js struct {
		Devices  []protocol.DeviceStatus      `json:"devices"`
		Assigned map[string]map[string]string `json:"assigned"`
	}
	if err := json.Unmarshal([]byte(out), &js); code != 0 || err != nil || len(js.Devices) != 1 || js.Devices[0].Labels["hw"] != "rev2" || js.Assigned["gw-1"]["hello"] != "1.0.0" {
		t.Errorf("status --json --select: %d %v\n%s", code, err, out)
	}
	if code, _, errs := f.run("status", "--broker", "URL", "--select", "site"); code != 2 || !strings.Contains(errs, "key=value") {
		t.Errorf("bad selector: exit %d\n%s", code, errs)
	}
}
