package main

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// TestRolloutTargetingEmbedded: staged rollouts on a fleet whose key set
// names a targeting key (protocol/SPEC.md §8.13), with real agents on
// root_keys, the embedded broker and its driver, and the operator CLI.
// The driver promotes a candidate as it is, so the candidates' targeting
// (signed by `rollout start --targeting-key` for --channel) is what the
// channel's devices check after the promotion:
//
//   - a rollout started before the key set named targeting keys promotes
//     an untargeted release; a device that joins later, on the key set
//     with a targeting key, gets only that promotion and refuses it,
//     saying it carries no targeting;
//   - `rollout start` without --targeting-key (or with a key the key set
//     does not name) is then refused before anything is published, and
//     so are `publish` and `assign`;
//   - with --targeting-key the rollout goes through its waves and is
//     promoted, and a device that only ever sees the promoted release
//     installs it.
func TestRolloutTargetingEmbedded(t *testing.T) {
	port := testkit.FreePort(t)
	runInBackground(t, "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", t.TempDir())
	f := newRFleet(t, fmt.Sprintf("tcp://127.0.0.1:%d", port))
	dir := t.TempDir()
	in := func(p string) string { return filepath.Join(dir, p) }
	ctx := context.Background()
	f.cli(0, "root", "init", "-o", in("root"), "--unencrypted")
	f.cli(0, "keygen", "-o", in("tg"), "--unencrypted")
	f.cli(0, "keygen", "-o", in("stranger"), "--unencrypted")
	f.rootPub = in("root/root.pub")
	keySet := func(version int, extra ...string) {
		t.Helper()
		file := in(fmt.Sprintf("ks%d.json", version))
		f.cli(0, append([]string{"keyset", "new", "-o", file, "--version", fmt.Sprint(version), "--root", f.rootPub, "--release", f.pubPath}, extra...)...)
		f.cli(0, "keyset", "sign", "--key", in("root/root.key"), file)
		f.cli(0, "keyset", "chain", "-o", file+".msg", file)
		f.cli(0, "keyset", "publish", "--broker", f.url, "--root", f.rootPub, file+".msg")
	}
	keySet(1) // no targeting keys yet

	const n = 4
	for i := 0; i < n; i++ {
		f.start(fmt.Sprintf("dev-%02d", i), map[string]string{"site": "berlin"})
	}
	f.cli(0, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", f.bundle("1.0.0", 1, false))
	testkit.Eventually(t, "4 devices commit 1.0.0", func() bool { return f.view.Converged("hello", "1.0.0", n, stateCommitted) })
	rolloutArgs := []string{"rollout", "start", "--broker", f.url, "--pub", f.pubPath, "--channel", "stable", "--quiet",
		"--waves", "1,100%", "--max-failures", "10%", "--min-executed", "1", "--bake", "1s", "--device-timeout", "2m"}

	// Key set 1 names no targeting key: an untargeted rollout is promoted.
	f.cli(0, append(rolloutArgs, f.bundle("2.0.0", 2, false))...)
	f.waitRollout("the untargeted rollout is done", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutDone })
	testkit.Eventually(t, "4 devices commit 2.0.0", func() bool { return f.view.Converged("hello", "2.0.0", n, stateCommitted) })

	// Key set 2 names the targeting key tg (for channel stable). A device
	// that joins now only gets the untargeted promotion, and refuses it.
	keySet(2, "--targeting", in("tg/release.pub")+":channels=stable")
	testkit.Eventually(t, "the devices take key set 2", func() bool { return len(f.view.KeySetBehind(2)) == 0 && len(f.view.Devices()) == n })
	f.start("dev-10", map[string]string{"site": "berlin"})
	lastErr := func(dev string) string {
		for _, d := range f.view.Devices() {
			if d.Device == dev {
				for _, a := range d.Apps {
					if a.App == "hello" {
						return a.LastError
					}
				}
			}
		}
		return ""
	}
	testkit.Eventually(t, "dev-10 refuses the untargeted promotion and says why", func() bool {
		return strings.Contains(lastErr("dev-10"), "carries no targeting") && strings.Contains(lastErr("dev-10"), "key set version 2")
	})
	if got := f.touchedBy("2.0.0"); len(got) != n {
		t.Errorf("devices that reported 2.0.0: %v, want only the %d of the first rollout", got, n)
	}

	// rollout start refuses, before publishing anything, a rollout the
	// devices would refuse: no --targeting-key, or a key not in the key set.
	before := f.retained()
	v3 := f.bundle("3.0.0", 3, false)
	if out := f.cli(1, append(rolloutArgs, v3)...); !strings.Contains(out, "key set version 2 on the broker names targeting keys") || !strings.Contains(out, "--targeting-key") {
		t.Errorf("rollout start without --targeting-key on a key set with targeting keys:\n%s", out)
	}
	if out := f.cli(1, append(rolloutArgs, "--targeting-key", in("stranger/release.key"), v3)...); !strings.Contains(out, "is not a targeting key of key set version 2") {
		t.Errorf("rollout start with a targeting key the key set does not name:\n%s", out)
	}
	// So do publish and assign: an untargeted release, or one for a
	// device targeted with a key the key set does not name.
	if out := f.cli(1, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", v3); !strings.Contains(out, "not publishing anything: key set version 2 on the broker names targeting keys") {
		t.Errorf("publish without --targeting-key on a key set with targeting keys:\n%s", out)
	}
	if out := f.cli(1, "assign", "--broker", f.url, "--pub", f.pubPath, "--quiet", "--device", "dev-10", "--targeting-key", in("stranger/release.key"), v3); !strings.Contains(out, "is not a targeting key of key set version 2") {
		t.Errorf("assign with a targeting key the key set does not name:\n%s", out)
	}
	if after := f.retained(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a refused rollout start changed the broker's retained set:\nbefore %v\nafter  %v", before, after)
	}

	// Targeted: waves, promotion; every device (dev-10 too) runs 3.0.0.
	f.cli(0, append(rolloutArgs, "--targeting-key", in("tg/release.key"), v3)...)
	r := f.waitRollout("the targeted rollout is done", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutDone })
	if r.Counts.Failed != 0 {
		t.Fatalf("targeted rollout counts %+v, want no failure", r.Counts)
	}
	testkit.Eventually(t, "5 devices commit 3.0.0", func() bool { return f.view.Converged("hello", "3.0.0", n+1, stateCommitted) })
	topic, _ := protocol.ReleaseTopic("stable", "hello", "linux-"+runtime.GOARCH)
	snap, err := fleet.Snapshot(ctx, f.op, []string{topic})
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.ParseEnvelope(snap[topic])
	if err != nil || env.Targeting == nil {
		t.Fatalf("the promoted release on %s carries no targeting (%v)", topic, err)
	}
	tg, err := protocol.ParseTargeting(env.Targeting.Doc)
	if err != nil || tg.Channel != "stable" || tg.Version != "3.0.0" || tg.Rollout != r.ID {
		t.Errorf("the promoted release's targeting is %+v (%v), want channel stable, 3.0.0, rollout %s", tg, err, r.ID)
	}
	// A device that joins after the promotion sees only the channel's
	// release (no candidate any more) and installs it.
	f.start("dev-11", map[string]string{"site": "berlin"})
	testkit.Eventually(t, "dev-11 installs the promoted, targeted 3.0.0", func() bool {
		return f.view.Converged("hello", "3.0.0", n+2, stateCommitted)
	})
}
