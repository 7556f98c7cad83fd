package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// A first install that fails its trial has nothing to go back to: it is
// marked failed (not left on trial, which would block every later release)
// and the next, fixed release installs.
func TestFirstInstallFailedTrial(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	err := a.Rollback("hello", "health check failed: exit status 1")
	if !errors.Is(err, ErrNoPrevious) {
		t.Fatalf("rollback of a first install: %v, want ErrNoPrevious", err)
	}
	st := appStatus(t, a, "hello")
	if st.State != StateFailed || !strings.Contains(st.LastError, "health check failed") || !strings.Contains(st.LastError, "first install") {
		t.Fatalf("after a failed first trial: %s", dumpJSON(st))
	}
	if got := runVersion(t, k.appPath); got != "1.0.0" {
		t.Fatalf("the only binary was removed or changed: %q", got)
	}
	// The same release again is refused (anti-rollback), a fixed one installs.
	if err := k.tryInstall(a, k.bundle(spec{Version: "1.0.0", Sequence: 1})); !errors.Is(err, ErrOldSequence) {
		t.Fatalf("replaying the failed release: %v, want ErrOldSequence", err)
	}
	res := k.install(a, k.bundle(spec{Version: "1.0.1", Sequence: 2}))
	if res.Version != "1.0.1" {
		t.Fatalf("fixed release: %+v", res)
	}
	if st := appStatus(t, a, "hello"); st.State != StateTrial {
		t.Fatalf("fixed release not on trial: %s", dumpJSON(st))
	}
}

func TestInstallTrialCommitRollback(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})

	res := k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	if res.Version != "1.0.0" || res.Previous != "" {
		t.Fatalf("first install: %+v", res)
	}
	if got := runVersion(t, k.appPath); got != "1.0.0" {
		t.Fatalf("app prints %q", got)
	}
	st := appStatus(t, a, "hello")
	if st.State != StateTrial || st.Sequence != 1 {
		t.Fatalf("after install: %s", dumpJSON(st))
	}
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit("hello"); err == nil {
		t.Fatal("second commit succeeded")
	}

	res = k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if res.Previous != "1.0.0" {
		t.Fatalf("second install: %+v", res)
	}
	if got := runVersion(t, k.appPath); got != "1.1.0" {
		t.Fatalf("app prints %q", got)
	}
	if got := runVersion(t, k.appPath+".prev"); got != "1.0.0" {
		t.Fatalf(".prev prints %q", got)
	}
	// Installing over an app on trial waits for its verdict...
	if err := k.tryInstall(a, k.bundle(spec{Version: "1.2.0", Sequence: 3})); !errors.Is(err, ErrBusy) {
		t.Fatalf("install during trial: %v, want ErrBusy", err)
	}
	// ...but a release that can never install here says so, not "busy".
	if err := k.tryInstall(a, k.bundle(spec{Version: "0.9.0", Sequence: 1})); !errors.Is(err, ErrOldSequence) {
		t.Fatalf("older release during trial: %v, want ErrOldSequence", err)
	}
	if err := k.tryInstall(a, k.bundle(spec{Version: "1.3.0", Sequence: 4, Target: target{GOARCH: "arm64"}})); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("foreign-architecture release during trial: %v, want ErrIncompatible", err)
	}
	if err := a.Rollback("hello", "health check failed"); err != nil {
		t.Fatal(err)
	}
	if got := runVersion(t, k.appPath); got != "1.0.0" {
		t.Fatalf("after rollback app prints %q", got)
	}
	st = appStatus(t, a, "hello")
	if st.State != StateRolledBack || st.Version != "1.0.0" || st.Sequence != 1 || !strings.Contains(st.LastError, "health check failed") {
		t.Fatalf("after rollback: %s", dumpJSON(st))
	}
	// The rolled-back release is not taken again (anti-rollback floor)...
	err := k.tryInstall(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if !errors.Is(err, ErrOldSequence) || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("reinstall of the rolled-back release: %v", err)
	}
	// ...but a newer one is.
	k.install(a, k.bundle(spec{Version: "1.2.0", Sequence: 3}))
	if v, seq, err := a.Installed("hello"); err != nil || v != "1.2.0" || seq != 3 {
		t.Fatalf("Installed = %q %d %v", v, seq, err)
	}
	st = appStatus(t, a, "hello")
	kinds := []string{}
	for _, e := range st.History {
		kinds = append(kinds, e.Kind)
	}
	if want := "installed committed installed refused refused rolled-back refused installed"; strings.Join(kinds, " ") != want {
		t.Fatalf("history %v, want %s", kinds, want)
	}
	assertNoLeftovers(t, k)
}

func TestInstallPartsAndProgress(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	b := k.bundleBytes(spec{Version: "1.0.0", Sequence: 1})
	bun, err := protocol.OpenBundle(bytes.NewReader(b), protocol.NewKeyring(k.pub))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := bun.Payload()
	var steps []string
	res, err := a.InstallParts(context.Background(), bun.RawManifest, bun.RawSignature, payload, func(p Progress) {
		if len(steps) == 0 || steps[len(steps)-1] != p.Step {
			steps = append(steps, p.Step)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != "1.0.0" {
		t.Fatal(res)
	}
	if want := "verify compat storage stage probe swap"; strings.Join(steps, " ") != want {
		t.Fatalf("steps %v, want %s", steps, want)
	}
}

func TestCheckChangesNothing(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	before := k.snap(a)
	f, _ := os.Open(k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	defer f.Close()
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	before = k.snap(a)
	m, err := a.Check(context.Background(), f)
	if err != nil || m.Version != "1.1.0" {
		t.Fatalf("check: %v %v", m, err)
	}
	if after := k.snap(a); after != before {
		t.Fatalf("check changed things:\n%+v\n%+v", before, after)
	}
	assertNoLeftovers(t, k)
	// A check that fails says why, and still changes nothing.
	f2, _ := os.Open(k.bundle(spec{Version: "1.1.0", Sequence: 2, Probe: &protocol.Probe{Args: []string{"--version"}, Expect: "9.9.9", Timeout: protocol.Duration(10 * time.Second)}}))
	defer f2.Close()
	if _, err := a.Check(context.Background(), f2); !errors.Is(err, ErrProbe) {
		t.Fatalf("check with a failing probe: %v", err)
	}
	if after := k.snap(a); after != before {
		t.Fatalf("failed check changed things")
	}
	assertNoLeftovers(t, k)
}

// assertNoLeftovers: only the binary and .prev in the app directory.
func assertNoLeftovers(t testing.TB, k *kit) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(k.appPath))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Name() != "hello" && e.Name() != "hello.prev" {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) > 0 {
		t.Fatalf("leftover files in %s: %v", filepath.Dir(k.appPath), names)
	}
}

// TestRefusals: every bad input is refused with a clear message and
// changes nothing — not the binary, not .prev, not the recorded state.
func TestRefusals(t *testing.T) {
	other, _, _ := protocol.GenerateKey()
	_ = other
	_, otherPriv, _ := protocol.GenerateKey()
	past := time.Now().Add(-time.Hour)

	cases := []struct {
		name   string
		opts   func() Options
		bundle func(k *kit) []byte
		is     error
		says   []string
		skip   string
	}{
		{name: "bad signature", is: protocol.ErrBadSignature, says: []string{"does not verify", "altered"},
			bundle: func(k *kit) []byte {
				b := k.bundleBytes(spec{Version: "1.1.0", Sequence: 6})
				// Change the signed sequence without re-signing (same length).
				return bytes.Replace(b, []byte(`"sequence": 6`), []byte(`"sequence": 9`), 1)
			}},
		{name: "unknown key", is: protocol.ErrUnknownKey, says: []string{"not among the trusted keys"},
			bundle: func(k *kit) []byte { return testkit.Bundle(k.t, spec{Version: "1.1.0", Sequence: 6}, otherPriv) }},
		{name: "tampered payload", is: protocol.ErrPayloadMismatch, says: []string{"does not match"},
			bundle: func(k *kit) []byte {
				b := k.bundleBytes(spec{Version: "1.1.0", Sequence: 6})
				b[len(b)-3000] ^= 0x55 // inside the payload (tar end is 1024 zero bytes plus padding)
				return b
			}},
		{name: "truncated bundle", is: protocol.ErrTruncated, says: []string{"ends"},
			bundle: func(k *kit) []byte {
				b := k.bundleBytes(spec{Version: "1.1.0", Sequence: 6})
				return b[:len(b)-100000]
			}},
		{name: "another app", is: ErrUnknownApp, says: []string{`app "world"`, "not configured"},
			bundle: func(k *kit) []byte { return k.bundleBytes(spec{App: "world", Version: "1.1.0", Sequence: 6}) }},
		{name: "wrong architecture", is: ErrIncompatible, says: []string{"arm64"},
			bundle: func(k *kit) []byte {
				tg := target{GOARCH: "arm64"}
				if runtime.GOARCH == "arm64" {
					tg = target{GOARCH: "amd64"}
				}
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Target: tg})
			}},
		{name: "GOARM=7 on ARMv6", is: ErrIncompatible, says: []string{"GOARM=7", "VFPv3"},
			opts: func() Options { return Options{CPU: armv6CPU()} },
			bundle: func(k *kit) []byte {
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Target: target{GOARCH: "arm", GOARM: "7"}})
			}},
		{name: "GOAMD64=v3 without AVX2", is: ErrIncompatible, says: []string{"GOAMD64=v3", "avx2"},
			skip: map[bool]string{true: "", false: "needs an amd64 host"}[runtime.GOARCH == "amd64"],
			opts: func() Options {
				c := hardware.CPUFacts{GOARCH: "amd64", AMD64Level: 2, Features: []string{"sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16"}}
				return Options{CPU: &c}
			},
			bundle: func(k *kit) []byte {
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Target: target{GOARCH: "amd64", GOAMD64: "v3"}})
			}},
		{name: "replayed older sequence", is: ErrOldSequence, says: []string{"sequence 4", "1.0.0 with sequence 5"},
			bundle: func(k *kit) []byte { return k.bundleBytes(spec{Version: "0.9.0", Sequence: 4}) }},
		{name: "replayed same sequence", is: ErrOldSequence, says: []string{"sequence 5"},
			bundle: func(k *kit) []byte { return k.bundleBytes(spec{Version: "1.0.0", Sequence: 5}) }},
		{name: "expired manifest", is: protocol.ErrExpired, says: []string{"expired"},
			bundle: func(k *kit) []byte { return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Expires: &past}) }},
		{name: "probe wrong output", is: ErrProbe, says: []string{`printed "1.1.0"`, `expected "2.0.0"`},
			bundle: func(k *kit) []byte {
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Probe: &protocol.Probe{Args: []string{"--version"}, Expect: "2.0.0", Timeout: protocol.Duration(10 * time.Second)}})
			}},
		{name: "probe output does not match", is: ErrProbe, says: []string{`printed "1.1.0"`, `does not match "^v1"`},
			bundle: func(k *kit) []byte {
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Probe: &protocol.Probe{Args: []string{"--version"}, Match: "^v1", Timeout: protocol.Duration(10 * time.Second)}})
			}},
		{name: "probe exits before stay_up", is: ErrProbe, says: []string{"exited with status 0 within 3s", "must stay up"},
			bundle: func(k *kit) []byte {
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Probe: &protocol.Probe{Args: []string{"--version"}, StayUp: protocol.Duration(3 * time.Second), Timeout: protocol.Duration(10 * time.Second)}})
			}},
		{name: "probe crash", is: ErrProbe, says: []string{"exited with status 3", "crashing on purpose"},
			bundle: func(k *kit) []byte {
				return k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Extra: "-X main.crash=1", Probe: &protocol.Probe{Args: []string{"--serve"}, Timeout: protocol.Duration(10 * time.Second)}})
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skipf("SKIP %s: %s", tc.name, tc.skip)
			}
			k := newKit(t)
			base := k.open(Options{})
			k.install(base, k.bundle(spec{Version: "1.0.0", Sequence: 5}))
			if err := base.Commit("hello"); err != nil {
				t.Fatal(err)
			}
			a := base
			if tc.opts != nil {
				base.Close()
				a = k.open(tc.opts())
			}
			before := k.snap(a)
			_, err := a.Install(context.Background(), bytes.NewReader(tc.bundle(k)), nil)
			if err == nil {
				t.Fatal("installed; want a refusal")
			}
			if !errors.Is(err, tc.is) {
				t.Fatalf("error %q does not wrap %v", err, tc.is)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if !Fatal(err) {
				t.Errorf("%v is not classified fatal for the release", err)
			}
			if after := k.snap(a); after != before {
				t.Fatalf("refusal changed things:\nbefore %+v\nafter  %+v", before, after)
			}
			if got := runVersion(t, k.appPath); got != "1.0.0" {
				t.Fatalf("app prints %q after a refusal", got)
			}
			assertNoLeftovers(t, k)
			t.Logf("refused: %v", err)
		})
	}
}

// TestProbeTimeoutIsTransient: a real probe that sleeps past its timeout
// (hello --version while HELLO_SLOW_FILE exists) is not a verdict on the
// binary: the error is ErrProbeTimeout, not ErrProbe, not Fatal, and
// nothing changed; the same bundle installs once the probe is fast again.
// A probe that answers wrongly stays fatal (TestRefusals).
func TestProbeTimeoutIsTransient(t *testing.T) {
	slow := filepath.Join(t.TempDir(), "slow")
	if err := os.WriteFile(slow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 5}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HELLO_SLOW_FILE", slow) // the probe inherits the agent's environment
	b := k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Probe: &protocol.Probe{Args: []string{"--version"}, Expect: "1.1.0", Timeout: protocol.Duration(300 * time.Millisecond)}})
	before := k.snap(a)
	_, err := a.Install(context.Background(), bytes.NewReader(b), nil)
	if err == nil {
		t.Fatal("installed although the probe could not finish")
	}
	if !errors.Is(err, ErrProbeTimeout) || errors.Is(err, ErrProbe) || Fatal(err) {
		t.Fatalf("err = %v; want ErrProbeTimeout, transient (not ErrProbe, not Fatal)", err)
	}
	if !strings.Contains(err.Error(), "did not finish within 300ms") {
		t.Errorf("err %q does not say what timed out", err)
	}
	if after := k.snap(a); after != before {
		t.Fatalf("a probe timeout changed things:\nbefore %+v\nafter  %+v", before, after)
	}
	assertNoLeftovers(t, k)
	os.Remove(slow)
	if _, err := a.Install(context.Background(), bytes.NewReader(b), nil); err != nil {
		t.Fatalf("the same release after the device calmed down: %v", err)
	}
	if got := runVersion(t, k.appPath); got != "1.1.0" {
		t.Fatalf("app prints %q, want 1.1.0", got)
	}
}

// A server probed with stay_up passes when it is still running after it,
// and one whose output matches the probe's pattern passes too.
func TestProbeStayUpAndMatch(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 5}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	b := k.bundleBytes(spec{Version: "1.1.0", Sequence: 6, Probe: &protocol.Probe{Args: []string{"--serve"}, StayUp: protocol.Duration(300 * time.Millisecond), Timeout: protocol.Duration(10 * time.Second)}})
	if _, err := a.Install(context.Background(), bytes.NewReader(b), nil); err != nil {
		t.Fatalf("a server that stays up was refused: %v", err)
	}
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	b = k.bundleBytes(spec{Version: "1.2.0", Sequence: 7, Probe: &protocol.Probe{Args: []string{"--version"}, Match: `^1\.2\.\d+$`, Timeout: protocol.Duration(10 * time.Second)}})
	if _, err := a.Install(context.Background(), bytes.NewReader(b), nil); err != nil {
		t.Fatalf("output matching the probe's pattern was refused: %v", err)
	}
}

// A rollback asked for by hand on a first install refuses and changes
// nothing: the app stays on trial, its record and binary untouched.
func TestRollbackByHandOfFirstInstallChangesNothing(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	before := k.snap(a)
	if err := a.CanRollback("hello"); !errors.Is(err, ErrNoPrevious) {
		t.Fatalf("CanRollback: %v, want ErrNoPrevious", err)
	}
	err := a.RollbackByHand("hello", "by hand")
	if !errors.Is(err, ErrNoPrevious) || !strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), "first version installed") {
		t.Fatalf("rollback by hand of a first install: %v", err)
	}
	if after := k.snap(a); after != before {
		t.Fatalf("a refused rollback changed things:\nbefore %+v\nafter  %+v", before, after)
	}
	if st := appStatus(t, a, "hello"); st.State != StateTrial {
		t.Fatalf("state %s, want still on trial", st.State)
	}
}
