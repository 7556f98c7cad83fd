package agent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// The MQTT transport refuses a release it cannot run (another profile's
// build, an expired one) before fetching it, from its own goroutine and
// without the app's install lock. A sideload of the same sequence (the
// build for this CPU) may be running at that moment: the refusal must
// only be recorded, never reset the running install's state. It used to
// clear the install's pending record, and the install then crashed the
// daemon at the swap (nil pending) or left a swapped binary recorded as
// the old version.
func TestTransportRefusalDuringInstall(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	c, _ := k.cfg.App("hello")
	tr := &mqttTransport{logf: t.Logf}
	ap := &mqttApp{cfg: c, failed: map[string]string{}}
	// The other profile's build of the same release (sequence 2).
	other, _ := testkit.Manifest(t, spec{App: "hello", Version: "1.1.0", Sequence: 2, Target: native, Profile: "linux-other"})
	other.Payload.SHA256 = hashBytes([]byte("another payload"))

	f, err := os.Open(k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	refusedMidway := false
	res, err := a.Install(t0ctx(), f, func(p Progress) {
		if p.Step == StepStage && !refusedMidway {
			refusedMidway = true
			tr.refuse(a, ap, &mqttRelease{m: other, id: "manifest-of-other"}, errors.New("hello 1.1.0: this CPU cannot run linux-other: "+protocol.ErrMalformed.Error()))
		}
	})
	if err != nil {
		t.Fatalf("the sideload failed after a concurrent refusal: %v", err)
	}
	if !refusedMidway {
		t.Fatal("the refusal never ran during staging")
	}
	st := appStatus(t, a, "hello")
	if st.State != StateTrial || st.Version != "1.1.0" || st.Previous != "1.0.0" || res.Version != "1.1.0" {
		t.Fatalf("after the install: %s", dumpJSON(st))
	}
	if got := runVersion(t, k.appPath); got != "1.1.0" {
		t.Fatalf("the app path runs %s", got)
	}
	if ap.failed["manifest-of-other"] == "" {
		t.Error("the transport forgot the refused release")
	}
}

// A probe cut short because the agent is stopping (its context cancelled)
// says nothing about the new binary: it must not be reported as a failed
// probe, which is fatal for the release (the MQTT transport never fetches
// it again, the sideload says "refused").
func TestProbeCancelledIsNotAProbeFailure(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	f, err := os.Open(k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = a.Install(ctx, f, func(p Progress) {
		if p.Step == StepProbe {
			cancel() // the daemon stops while the probe runs
		}
	})
	if err == nil {
		t.Fatal("the install went on after its context was cancelled")
	}
	if errors.Is(err, ErrProbe) || Fatal(err) || !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled probe is reported as %v (fatal %v); want context.Canceled, not a probe failure", err, Fatal(err))
	}
	if got := runVersion(t, k.appPath); got != "1.0.0" {
		t.Fatalf("the app path runs %s", got)
	}
	// The same release installs once the agent runs again.
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
}

// A dry run while an install of the same app runs (the daemon serves
// `check` without waiting) must say so, not send the field engineer off to
// restart an agent that is running fine.
func TestCheckDuringInstallSaysItIsRunning(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	f, err := os.Open(k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var checkErr error
	checked := false
	if _, err := a.Install(t0ctx(), f, func(p Progress) {
		if p.Step == StepStage && !checked {
			checked = true
			g, err := os.Open(k.bundle(spec{Version: "1.1.0", Sequence: 2}))
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			_, checkErr = a.Check(t0ctx(), g)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(checkErr, ErrBusy) || !strings.Contains(checkErr.Error(), "running") || strings.Contains(checkErr.Error(), "interrupted") {
		t.Fatalf("check during an install: %v", checkErr)
	}
}
