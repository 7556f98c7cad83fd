package powercut

// The plan and the log readers, without machines: these run in every
// go test ./... .

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// The smoke plan cuts every workload, the mqttdelta workload at one of
// its own points, only pairs that exist, and the same seed gives the same
// plan; over many seeds it reaches both random moments and failpoints.
func TestSmokePlan(t *testing.T) {
	random, fps := 0, 0
	for s := uint64(0); s < 50; s++ {
		p := planAll("smoke", 0, rand.New(rand.NewPCG(s, 0)))
		if len(p) != len(workloads)+1 {
			t.Fatalf("seed %d: %d cuts, want %d", s, len(p), len(workloads)+1)
		}
		own := false
		for _, w := range workloads {
			if !slices.ContainsFunc(p, func(c cut) bool { return c.workload == w }) {
				t.Errorf("seed %d: workload %s is not cut: %v", s, w, p)
			}
		}
		for _, c := range p {
			if c.point == pointRandom {
				random++
			} else {
				fps++
			}
		}
		for _, c := range p {
			if !slices.Contains(mountSets, c.mount) {
				t.Errorf("seed %d: %s: no mount option set", s, c)
			}
			if c.point != pointRandom && !slices.Contains(workloadsOf(c.point), c.workload) {
				t.Errorf("seed %d: %s: the workload does not pass that failpoint", s, c)
			}
			if c.point == pointRandom && (c.frac < 0 || c.frac >= 1.1) {
				t.Errorf("seed %d: %s: moment %.2f outside [0, 1.1)", s, c, c.frac)
			}
			if c.workload == "mqttdelta" && slices.Contains(mqttDeltaPoints, c.point) {
				own = true
			}
		}
		if !own {
			t.Errorf("seed %d: no mqttdelta cut at one of %v: %v", s, mqttDeltaPoints, p)
		}
		if q := planAll("smoke", 0, rand.New(rand.NewPCG(s, 0))); !slices.Equal(p, q) {
			t.Fatalf("seed %d: two plans differ:\n%v\n%v", s, p, q)
		}
	}
	if random < 100 || fps < 150 {
		t.Errorf("50 smoke plans: %d random moments, %d failpoint cuts: the coin is not fair", random, fps)
	}
}

// The long plan takes every failpoint with every workload that passes it.
func TestLongPlanCoversEveryPair(t *testing.T) {
	p := planAll("long", 400, rand.New(rand.NewPCG(1, 0)))
	for _, fp := range failpoints {
		for _, w := range workloadsOf(fp) {
			if !slices.ContainsFunc(p, func(c cut) bool { return c.workload == w && c.point == fp }) {
				t.Errorf("no cut of %s at %s in 400", w, fp)
			}
		}
	}
}

// routeOf reads the agent's log lines as the check boot prints them.
func TestRouteOf(t *testing.T) {
	boot := func(ls ...string) *bootResult {
		b := &bootResult{}
		for _, l := range ls {
			b.lines = append(b.lines, line{text: l})
		}
		return b
	}
	for _, tc := range []struct {
		lines      []string
		route, why string
	}{
		{[]string{"PC:APP 1.0.0", "mqtt: hello: fetching 1.1.0 (sequence 2, 1 chunks, 1 already here) as a delta from 1.0.0 (5.0 KiB instead of 1.6 MiB)"}, "delta", ""},
		{[]string{"mqtt: hello: fetching 1.1.0 (sequence 2, 1 chunks, 0 already here) as a delta from 1.0.0 (5.0 KiB instead of 1.6 MiB)",
			"mqtt: hello 1.1.0: not using the delta (the delta's base is not this device's executable); fetching the full release",
			"mqtt: hello: fetching 1.1.0 (sequence 2, 7 chunks, 0 already here)"}, "full", "the delta's base is not this device's executable"},
		{[]string{"PC:APP 1.1.0", "PC:RESUMED 0"}, "none", ""},
	} {
		r, why := routeOf(boot(tc.lines...))
		if r != tc.route || why != tc.why {
			t.Errorf("routeOf(%q) = %q, %q; want %q, %q", tc.lines, r, why, tc.route, tc.why)
		}
	}
}

// A daemon log line inside a status block does not break its JSON.
func TestBlockSkipsDaemonLog(t *testing.T) {
	b := &bootResult{}
	for _, l := range []string{"PC:RESUME{", "edgefleet-agent: 2026/12/01 23:15:17 app hello: passed its trial, committed", "{", `"apps": [{"app": "hello", "version": "1.1.0", "state": "committed"}]`, "}", "PC:RESUME}"} {
		b.lines = append(b.lines, line{text: l})
	}
	st, ok := parseStatus(b.block("RESUME"))
	if !ok || st.Version != "1.1.0" || st.State != "committed" {
		t.Fatalf("parseStatus(block) = %+v, %v; want hello 1.1.0 committed", st, ok)
	}
}
