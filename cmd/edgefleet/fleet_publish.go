package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("publish", command{summary: "verify bundles and publish them to a channel over MQTT (retained)", run: func(ctx context.Context, env *cliEnv, args []string) int {
		return runPublish(ctx, env, "publish", args)
	}})
	register("assign", command{summary: "publish a bundle for some devices (wins over their channel; --clear APP undoes)", run: func(ctx context.Context, env *cliEnv, args []string) int {
		return runPublish(ctx, env, "assign", args)
	}})
}

func runPublish(ctx context.Context, env *cliEnv, name string, args []string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	var pubs, devices stringsFlag
	fs.Var(&pubs, "pub", "trusted minisign public key file; repeat for several (required: bundles are verified before publishing)")
	inFlight := fs.Int("in-flight", 16, "unacknowledged chunk publishes at most")
	quiet := fs.Bool("quiet", false, "no progress bar")
	mirrorDir := fs.String("mirror", "", "also write the chunks as content-addressed objects under this `DIR` (DIR/chunks/<app>/<sha256>/<i>, protocol/SPEC.md §8.9) for a static web server, CDN or S3 website; written before the release goes out")
	var mirrorURLs stringsFlag
	targetingKey := fs.String("targeting-key", "", "targeting secret `KEY` (delegated by the key set): sign that the release goes to this channel or device (protocol/SPEC.md §8.13)")
	targetingLife := fs.Duration("targeting-lifetime", fleet.DefaultTargetingLifetime, "how long the targeting holds; devices refuse the release after it unless it is published again")
	fs.Var(&mirrorURLs, "mirror-url", "base `URL` of a mirror serving the --mirror directory, listed in the release so devices fetch chunks there first (the broker's chunks stay the fallback); repeat for several, at most 8")
	var channel, clear string
	var force *bool
	if name == "publish" {
		fs.StringVar(&channel, "channel", "stable", "release channel")
		fs.Usage = func() {
			fmt.Fprintln(env.stderr, "usage: edgefleet publish --broker URL --pub KEY [--channel stable] [--mirror DIR] [--mirror-url URL...] BUNDLE...")
			fmt.Fprintln(env.stderr, "A sequence the broker already holds for a different build of the app is refused.")
			fs.PrintDefaults()
		}
	} else {
		fs.Var(&devices, "device", "device id; repeat for several (required)")
		fs.StringVar(&clear, "clear", "", "remove the devices' assignment of this app instead (they follow their channel again)")
		force = fs.Bool("force", false, "assign to a device that has no status on the broker, or whose reported CPU cannot run the bundle (never overrides the sequence check)")
		fs.Usage = func() {
			fmt.Fprintln(env.stderr, "usage: edgefleet assign --broker URL --pub KEY --device ID [--device ID...] [--force] BUNDLE...\n       edgefleet assign --broker URL --device ID [--device ID...] --clear APP")
			fmt.Fprintln(env.stderr, "With one bundle per profile of an app, each device gets the one for its profile (or the only one its CPU runs).")
			fs.PrintDefaults()
		}
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(env.stderr, "edgefleet %s: "+format+"\n", append([]any{name}, a...)...)
		fs.Usage()
		return 2
	}
	if name == "assign" && len(devices) == 0 {
		return usage("name at least one --device")
	}
	devices = dedupe(devices)
	if err := protocol.CheckMirrors(mirrorURLs); err != nil {
		return usage("--mirror-url: %v", err)
	}
	for _, d := range devices {
		if err := protocol.CheckDeviceID(d); err != nil {
			return usage("--device: %v", err)
		}
	}
	if clear != "" {
		if fs.NArg() != 0 {
			return usage("--clear takes no bundles")
		}
		if !protocol.ValidApp(clear) {
			return usage("--clear %q is not an app name", clear)
		}
	} else if m := missingFlags(fs, "pub"); m != "" {
		return usage("%s: bundles are verified before they are published", m)
	} else if fs.NArg() == 0 {
		return usage("give at least one bundle")
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(env.stderr, "edgefleet %s: "+format+"\n", append([]any{name}, a...)...)
		return 1
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		return fail("%v", err)
	}
	defer func() { c.Disconnect(250) }() // c changes when a broker fails
	if clear != "" {
		return runClear(ctx, env, c, devices, clear)
	}
	kr, err := protocol.LoadKeyring(pubs...)
	if err != nil {
		return fail("%v", err)
	}
	bundles := fs.Args()
	if name == "publish" {
		// A release's deltas (pack --delta-from) go with it, first.
		bundles = withDeltas(bundles)
	}
	targeting, err := targetingOptions(env, *targetingKey, *targetingLife) // keyset.go
	if err != nil {
		return fail("%v", err)
	}
	// Verify every bundle, and check every sequence, before anything is
	// published, so a bad one in a batch does not leave half a release on
	// the broker.
	var ms []*protocol.Manifest
	for _, path := range bundles {
		m, err := fleet.VerifyBundleFile(path, kr, time.Now())
		if err != nil {
			return fail("not publishing anything: %v", err)
		}
		if m.IsDelta() && name != "publish" {
			return fail("not assigning anything: %s is a delta; assign the full bundle (its deltas are published with edgefleet publish)", path)
		}
		ms = append(ms, m)
	}
	cat, err := fleet.LoadCatalog(ctx, c, kr)
	if err != nil {
		return fail("%v", err)
	}
	if n := cat.Malformed(); n > 0 {
		fmt.Fprintf(env.stderr, "edgefleet %s: warning: %d retained release or rollout messages on the broker are malformed and were not checked against (edgefleet releases lists them)\n", name, n)
	}
	// Devices whose key set names targeting keys refuse an untargeted
	// release, or one targeted with another key: say so before anything
	// is on the broker.
	ksnap, err := fleet.Snapshot(ctx, c, []string{protocol.KeySetTopic})
	if err != nil {
		return fail("%v", err)
	}
	targetChannel := channel
	if name != "publish" {
		targetChannel = "" // an assignment is targeted at devices
	}
	if err := fleet.CheckTargetingFor(fleet.ReadKeySet(ksnap), targeting, targetChannel); err != nil {
		return fail("not publishing anything: %v", err)
	}
	for i, m := range ms {
		if m.IsDelta() {
			continue // a delta carries its release's sequence; the release is checked
		}
		if err := cat.CheckSequence(m, m.Payload.SHA256); err != nil {
			return fail("not publishing anything: %s: %v", bundles[i], err)
		}
		cat.AddPending(m, bundles[i]+" (in this batch)")
	}

	type job struct {
		path, device string
		chunksSent   bool
	}
	var jobs []job
	if name == "publish" {
		for _, path := range bundles {
			jobs = append(jobs, job{path: path})
		}
	} else {
		plan, code := planAssign(ctx, env, c, devices, bundles, ms, *force)
		if code != 0 {
			return code
		}
		sent := map[string]bool{}
		for _, p := range plan {
			jobs = append(jobs, job{path: p[1], device: p[0], chunksSent: sent[p[1]]})
			sent[p[1]] = true
		}
	}
	for _, path := range bundles {
		// A key set in the bundle does not travel over MQTT (SPEC.md §2).
		if _, _, ks, _, err := readBundleUnverified(path); err == nil && ks != nil {
			if ki := describeKeySet(ks); ki != nil && ki.Version > 0 {
				fmt.Fprintf(env.stderr, "edgefleet %s: note: %s carries key set version %d, which devices over MQTT do not take from it: they read key sets on %s only (edgefleet keyset publish)\n", name, path, ki.Version, protocol.KeySetTopic)
				break
			}
		}
	}
	for _, j := range jobs {
		opts := fleet.PublishOptions{Keyring: kr, Channel: channel, Device: j.device, InFlight: *inFlight, EnvelopeOnly: j.chunksSent, MirrorDir: *mirrorDir, Mirrors: mirrorURLs, Targeting: targeting}
		done := func() {}
		if !*quiet && !j.chunksSent {
			opts.Progress, done = progress(env, env.stderr, j.path)
		}
		res, err := bf.publish(ctx, env, name, &c, j.path, opts)
		done()
		if err != nil {
			return fail("%v", err)
		}
		where := "channel " + channel
		if j.device != "" {
			where = "device " + j.device
		}
		sent := fmt.Sprintf("%d chunks, %s", res.Chunks, humanBytes(res.Bytes))
		if j.chunksSent {
			sent = "chunks already sent"
		}
		if *mirrorDir != "" {
			sent += fmt.Sprintf("; %d chunk objects written to %s", res.MirrorWritten, *mirrorDir)
		}
		if len(mirrorURLs) > 0 {
			sent += fmt.Sprintf("; mirrors %s", strings.Join(mirrorURLs, ", "))
		}
		if d := res.Manifest.Delta; d != nil {
			fmt.Fprintf(env.stdout, "published the delta from %s to %s %s (%s): %s\n", orUnknownVersion(d.BaseVersion), res.Manifest.App, res.Manifest.Version, res.Manifest.Profile, sent)
			continue
		}
		fmt.Fprintf(env.stdout, "published %s %s (sequence %d, %s) to %s: %s\n",
			res.Manifest.App, res.Manifest.Version, res.Manifest.Sequence, res.Manifest.Profile, where, sent)
	}
	return 0
}

// planAssign decides which bundle each device gets ([device, path]
// pairs): per app, the device's profile's bundle, or the only one its
// CPU runs. Unknown devices and bundles a device's CPU cannot run are
// refused unless force (then they are warnings); nothing is assigned when
// one pair is refused. It returns a non-zero exit code on refusal.
func planAssign(ctx context.Context, env *cliEnv, c paho.Client, devices, paths []string, ms []*protocol.Manifest, force bool) ([][2]string, int) {
	statuses, bad, err := fleet.DeviceStatuses(ctx, c, devices)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet assign: %v\n", err)
		return nil, 1
	}
	var apps []string
	byApp := map[string][]int{}
	for i, m := range ms {
		if byApp[m.App] == nil {
			apps = append(apps, m.App)
		}
		byApp[m.App] = append(byApp[m.App], i)
	}
	var plan [][2]string
	var refused []error
	warn := func(err error) {
		if force && (errors.Is(err, fleet.ErrUnknownDevice) || errors.Is(err, fleet.ErrWrongCPU)) {
			fmt.Fprintf(env.stderr, "edgefleet assign: warning (--force): %v\n", err)
			return
		}
		refused = append(refused, err)
	}
	for _, d := range devices {
		st := statuses[d]
		if err := fleet.CheckKnown(d, st, bad[d]); err != nil {
			warn(err)
		}
		for _, app := range apps {
			idx := byApp[app]
			var cands []*protocol.Manifest
			for _, i := range idx {
				cands = append(cands, ms[i])
			}
			pick := 0
			if st == nil {
				if len(idx) > 1 {
					refused = append(refused, fmt.Errorf("device %s: %d bundles of %s and no status to choose by: give the one bundle it should get", d, len(idx), app))
					continue
				}
			} else {
				p, err := fleet.PickBundle(st, cands)
				if err != nil {
					if errors.Is(err, fleet.ErrWrongCPU) && force && len(idx) == 1 {
						p = 0
					} else {
						refused = append(refused, err)
						continue
					}
				}
				pick = p
				note, err := fleet.CheckRuns(st, cands[pick])
				if err != nil {
					warn(err)
					if !force {
						continue
					}
				} else if note != "" {
					fmt.Fprintf(env.stderr, "edgefleet assign: note: %s\n", note)
				}
			}
			plan = append(plan, [2]string{d, paths[idx[pick]]})
		}
	}
	if len(refused) > 0 {
		for _, err := range refused {
			fmt.Fprintf(env.stderr, "edgefleet assign: %v\n", err)
		}
		fmt.Fprintln(env.stderr, "edgefleet assign: nothing was assigned")
		return nil, 1
	}
	return plan, 0
}

// runClear removes the devices' assignments of app, saying so for a
// device that has none. Exit 1 when no device had one.
func runClear(ctx context.Context, env *cliEnv, c paho.Client, devices []string, app string) int {
	snap, err := fleet.Snapshot(ctx, c, []string{protocol.AllDesiredFilter})
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet assign: %v\n", err)
		return 1
	}
	cleared := 0
	for _, d := range devices {
		t, err := protocol.DesiredTopic(d, app)
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet assign: %v\n", err)
			return 1
		}
		if len(snap[t]) == 0 {
			fmt.Fprintf(env.stderr, "edgefleet assign: %s has no assignment of %s: nothing to clear (it follows its channel)\n", d, app)
			continue
		}
		if err := fleet.Unassign(ctx, c, d, app); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet assign: %v\n", err)
			return 1
		}
		cleared++
		fmt.Fprintf(env.stdout, "cleared the assignment of %s on %s; it follows its channel again\n", app, d)
	}
	if cleared == 0 {
		return 1
	}
	return 0
}

func dedupe(list []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
