package protocol

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validRollout() *Rollout {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	return &Rollout{Schema: 1, ID: "hello-7-3f2a", Channel: "stable", App: "hello", Version: "1.4.0", Sequence: 7,
		Profiles: []string{"linux-arm64"}, Select: Selector{"site": "berlin"},
		Waves: []Wave{{Count: 1}, {Percent: 50}, {Percent: 100}}, MaxFailures: 0.1, MinExecuted: 3, BakeSeconds: 600, DeviceTimeoutSeconds: 1800,
		State: RolloutRunning, Cut: 12345, Cuts: []uint64{12345}, WaveStarted: []time.Time{now}, Created: now, Updated: now}
}

func TestRolloutRoundTrip(t *testing.T) {
	r := validRollout()
	r.Reason = "waiting\x1b[2J for wave 1"
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRollout(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != r.ID || got.Cut != 12345 || got.Select["site"] != "berlin" || len(got.Waves) != 3 || got.Waves[1].Percent != 50 {
		t.Fatalf("round trip changed the rollout: %+v", got)
	}
	if strings.ContainsRune(got.Reason, 0x1b) {
		t.Fatalf("escape kept in reason: %q", got.Reason)
	}
}

func TestRolloutRejects(t *testing.T) {
	for name, mut := range map[string]func(*Rollout){
		"id":        func(r *Rollout) { r.ID = "Bad/Id" },
		"cut":       func(r *Rollout) { r.Cut = FullCut + 1 },
		"state":     func(r *Rollout) { r.State = "exploded" },
		"share":     func(r *Rollout) { r.MaxFailures = 1.5 },
		"wave":      func(r *Rollout) { r.Wave = 3 },
		"wavekind":  func(r *Rollout) { r.Waves[0] = Wave{Count: 1, Percent: 5} },
		"label":     func(r *Rollout) { r.Select = Selector{"Site": "x"} },
		"profiles":  func(r *Rollout) { r.Profiles = nil },
		"sequence":  func(r *Rollout) { r.Sequence = 0 },
		"failures":  func(r *Rollout) { r.Failures = make([]RolloutFailure, MaxRolloutFailures+1) },
		"negatives": func(r *Rollout) { r.BakeSeconds = -1 },
	} {
		r := validRollout()
		mut(r)
		if _, err := r.Marshal(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Marshal = %v, want ErrMalformed", name, err)
		}
	}
	for _, b := range []string{``, `{}`, `{"schema":2}`, `{"schema":1,"id":"a","x":1}`} {
		if _, err := ParseRollout([]byte(b)); err == nil {
			t.Errorf("ParseRollout(%q) accepted", b)
		}
	}
}

func TestParseWaves(t *testing.T) {
	w, err := ParseWaves("1, 5%,25%,100%")
	if err != nil || len(w) != 4 || w[0].Count != 1 || w[3].Percent != 100 {
		t.Fatalf("ParseWaves = %v, %v", w, err)
	}
	if got := w[1].Size(20); got != 1 {
		t.Errorf("5%% of 20 = %d, want 1", got)
	}
	if got := w[2].Size(21); got != 6 {
		t.Errorf("25%% of 21 = %d, want 6 (rounded up)", got)
	}
	for in, want := range map[string]string{
		"":            "no waves",
		"5%,5%,100%":  "must grow",
		"10,5,100%":   "must grow",
		"1,150%":      "above 0 and at most 100",
		"1,50%":       "last wave",
		"50%,3,100%":  "count after a percentage",
		"0,100%":      "device count",
		"x,100%":      "device count",
		"1,-5%,100%":  "above 0",
		"1,NaN%,100%": "above 0",
	} {
		if _, err := ParseWaves(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseWaves(%q) = %v, want an error saying %q", in, err, want)
		}
	}
}

func TestSelectorAndShare(t *testing.T) {
	sel, err := ParseSelector("site=berlin, hw=rev2")
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(Labels{"site": "berlin", "hw": "rev2", "x": "y"}) || sel.Matches(Labels{"site": "berlin"}) || sel.Matches(nil) {
		t.Fatal("selector matching is wrong")
	}
	if empty, _ := ParseSelector(""); !empty.Matches(nil) {
		t.Fatal("the empty selector must match every device")
	}
	for _, bad := range []string{"site", "=x", "site=a,site=b", "Site=x", "a=b c"} {
		if _, err := ParseSelector(bad); err == nil {
			t.Errorf("ParseSelector(%q) accepted", bad)
		}
	}
	for in, want := range map[string]float64{"10%": 0.1, "0.25": 0.25, "0": 0, "100%": 1} {
		if got, err := ParseShare(in); err != nil || got != want {
			t.Errorf("ParseShare(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"101%", "1.5", "-1%", "x", "NaN"} {
		if _, err := ParseShare(bad); err == nil {
			t.Errorf("ParseShare(%q) accepted", bad)
		}
	}
}

// TestMemberHashVector pins the membership hash (SPEC.md §8.8): devices
// and drivers of different builds must agree on it.
func TestMemberHashVector(t *testing.T) {
	if got := MemberHash("hello-7-3f2a", "pi-017"); got != memberHashVector {
		t.Fatalf("MemberHash = %d, want %d", got, memberHashVector)
	}
	if InCut("r", "d", 0) || !InCut("r", "d", FullCut) {
		t.Fatal("cut 0 must hold nobody and FullCut everybody")
	}
	// Spread: about half of 10,000 ids fall below half the space.
	n := 0
	for i := 0; i < 10000; i++ {
		if InCut("r1", "dev-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String(), FullCut/2) {
			n++
		}
	}
	if n < 4500 || n > 5500 {
		t.Fatalf("%d of 10000 below half the space", n)
	}
}

func TestRolloutTopics(t *testing.T) {
	rt, _ := RolloutTopic("stable", "hello")
	ct, _ := CandidateTopic("stable", "hello", "linux-arm64")
	for _, s := range []string{rt, ct, DriverTopic} {
		tp, err := ParseTopic(s)
		if err != nil || tp.String() != s {
			t.Errorf("ParseTopic(%q) = %+v, %v", s, tp, err)
		}
	}
	if _, err := RolloutTopic("stable", "a/b"); err == nil {
		t.Error("RolloutTopic accepted a '/' in the app")
	}
}

func TestStatusRolloutFields(t *testing.T) {
	at := time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)
	s := &DeviceStatus{Schema: 1, Device: "pi-1", Channel: "stable", Labels: Labels{"site": "berlin"}, Time: at,
		Apps: []AppReport{{App: "hello", WindowOpens: &at, Rollout: &RolloutReport{ID: "r-1", Phase: PhaseFailed, Error: "bad\x1b"}}}}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["site"] != "berlin" || got.Apps[0].Rollout.Phase != PhaseFailed || !got.Apps[0].WindowOpens.Equal(at) || strings.ContainsRune(got.Apps[0].Rollout.Error, 0x1b) {
		t.Fatalf("status fields lost: %+v", got.Apps[0])
	}
	s.Apps[0].Rollout.Phase = "bogus"
	if _, err := s.Marshal(); err == nil {
		t.Fatal("a bogus phase was accepted")
	}
}

func FuzzParseRollout(f *testing.F) {
	b, _ := validRollout().Marshal()
	f.Add(b)
	f.Add([]byte(`{"schema":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRollout(b)
		if err != nil {
			return
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("parsed rollout does not marshal: %v", err)
		}
		if _, err := ParseRollout(out); err != nil {
			t.Fatalf("re-marshalled rollout does not parse: %v", err)
		}
	})
}

func FuzzParseWavesAndSelector(f *testing.F) {
	f.Add("1,5%,25%,100%")
	f.Add("site=berlin,hw=rev2")
	f.Fuzz(func(t *testing.T, s string) {
		if w, err := ParseWaves(s); err == nil {
			if w[len(w)-1].Percent != 100 {
				t.Fatalf("accepted waves %v not ending at 100%%", w)
			}
			sz := WaveSizes(w, 1000)
			for i := 1; i < len(w); i++ {
				if sz[i] < sz[i-1] {
					t.Fatalf("waves %v shrink: %v", w, sz)
				}
			}
			if sz[len(sz)-1] != 1000 {
				t.Fatalf("waves %v do not reach every device: %v", w, sz)
			}
		}
		if sel, err := ParseSelector(s); err == nil {
			if err := sel.Validate(); err != nil {
				t.Fatalf("accepted selector does not validate: %v", err)
			}
		}
	})
}

func FuzzParseDriverPresence(f *testing.F) {
	b, _ := (&DriverPresence{Schema: 1, Instance: "abc", Online: true}).Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := ParseDriverPresence(b); err == nil {
			if _, err := d.Marshal(); err != nil {
				t.Fatalf("parsed presence does not marshal: %v", err)
			}
		}
	})
}

// memberHashVector: printf 'hello-7-3f2a\npi-017' | sha256sum, first 8 hex digits as a number.
const memberHashVector uint64 = 2981260506
