package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("rollout", command{summary: "staged rollouts: start, status, pause, resume, abort, drive", run: runRollout})
}

// rolloutSequenceCheck refuses a sequence the broker already holds for a
// different build of the same app (a channel release, an assignment or
// another rollout's candidate), before anything is published: the same
// sequence for two builds would split the fleet silently. It also refuses
// a sequence not newer than the channel's release.
func rolloutSequenceCheck(channel string, manifests []*protocol.Manifest, retained map[string][]byte) error {
	held := map[string][]byte{}
	for t, b := range retained {
		if tp, err := protocol.ParseTopic(t); err == nil && (tp.Kind == protocol.KindRelease || tp.Kind == protocol.KindDesired ||
			tp.Kind == protocol.KindRollout || tp.Kind == protocol.KindCandidate) {
			held[t] = b
		}
	}
	cat := fleet.NewCatalog(held, nil)
	for _, m := range manifests {
		// A candidate not newer than the channel's release would be
		// refused by every device that runs the channel's (anti-rollback):
		// the rollout would halt on refusals.
		for _, h := range cat.Releases {
			if h.Manifest != nil && h.App == m.App && h.Channel == channel && h.Manifest.Sequence >= m.Sequence {
				return fmt.Errorf("%s %s has sequence %d, not newer than %s %s (sequence %d) on %s: devices that run it would refuse the rollout (anti-rollback); re-pack with --sequence %d",
					m.App, m.Version, m.Sequence, h.App, h.Manifest.Version, h.Manifest.Sequence, h.Where(), cat.NextSequence(m.App))
			}
		}
		if err := cat.CheckSequence(m, m.Payload.SHA256); err != nil {
			return err
		}
		cat.AddPending(m, m.Profile+" bundle (in this rollout)")
	}
	return nil
}

func rolloutUsage(w io.Writer) {
	fmt.Fprintln(w, `usage: edgefleet rollout start --broker URL --pub KEY [--channel stable] [--waves 1,5%,25%,100%]
                         [--max-failures 10%] [--min-executed 3] [--bake 10m] [--device-timeout 30m]
                         [--select site=berlin] BUNDLE...
       edgefleet rollout status [ROLLOUT|CHANNEL/APP] [--watch] [--json]
       edgefleet rollout pause|resume|abort ROLLOUT|CHANNEL/APP
       edgefleet rollout drive [--take-over]      (the driver; 'edgefleet broker' runs one by default)`)
}

func runRollout(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 0 {
		rolloutUsage(env.stderr)
		return 2
	}
	switch args[0] {
	case "start":
		return runRolloutStart(ctx, env, args[1:])
	case "status":
		return runRolloutStatus(ctx, env, args[1:])
	case "pause", "resume", "abort":
		return runRolloutCommand(ctx, env, args[0], args[1:])
	case "drive":
		return runRolloutDrive(ctx, env, args[1:])
	case "-h", "--help", "help":
		rolloutUsage(env.stdout)
		return 0
	}
	fmt.Fprintf(env.stderr, "edgefleet rollout: unknown subcommand %q\n", args[0])
	rolloutUsage(env.stderr)
	return 2
}

// parseArgs parses flags that may come after the positional arguments too.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return fs.Args(), nil
}

// startPlan is a checked `rollout start`: nothing is published before
// every check passed.
type startPlan struct {
	rollout   *protocol.Rollout
	bundles   []string
	selected  []string
	driver    *protocol.DriverPresence
	waveSizes []int
}

func runRolloutStart(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("rollout start", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	var pubs stringsFlag
	fs.Var(&pubs, "pub", "trusted minisign public key file; repeat for several (required)")
	channel := fs.String("channel", "stable", "release channel")
	waves := fs.String("waves", "1,5%,25%,100%", "cumulative waves: device counts, then percentages of the selected devices; the last 100%")
	maxFail := fs.String("max-failures", "10%", "halt when more than this share of the devices that reported failed")
	minExec := fs.Int("min-executed", 3, "outcomes needed before the share counts (a failing wave of one halts anyway)")
	bake := fs.Duration("bake", 10*time.Minute, "wait after a wave completes before the next starts")
	timeout := fs.Duration("device-timeout", 30*time.Minute, "a member with no outcome this long after its wave started counts as failed (0: never)")
	sel := fs.String("select", "", "label selector, e.g. site=berlin,hw=rev2 (default: every device on the channel)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	mirrorDir := fs.String("mirror", "", "also write the chunks as content-addressed objects under this `DIR` for a static web server or CDN (as publish --mirror)")
	var mirrorURLs stringsFlag
	fs.Var(&mirrorURLs, "mirror-url", "base `URL` of a mirror serving the --mirror directory, listed in the candidates (kept when the driver promotes them); repeat for several, at most 8")
	targetingKey := fs.String("targeting-key", "", "targeting secret `KEY`: sign that the candidates go to --channel (protocol/SPEC.md §8.13; needed when the devices' key set names targeting keys)")
	targetingLife := fs.Duration("targeting-lifetime", fleet.DefaultTargetingLifetime, "how long the targeting holds from the start; the driver promotes the candidates with it, so publish the channel's release again with a fresh targeting before it expires")
	fs.Usage = func() { rolloutUsage(env.stderr); fs.PrintDefaults() }
	bundles, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if m := missingFlags(fs, "pub"); m != "" {
		return usageError(fs, "%s: bundles are verified before anything is published", m)
	}
	if len(bundles) == 0 {
		return usageError(fs, "give at least one bundle")
	}
	fail := func(format string, a ...any) int {
		// The protocol's sentinel ("...: malformed") says nothing more to
		// an operator than the sentence before it.
		msg := strings.TrimSuffix(fmt.Sprintf(format, a...), ": "+protocol.ErrMalformed.Error())
		fmt.Fprintf(env.stderr, "edgefleet rollout start: nothing published: %s\n", msg)
		return 1
	}
	r := &protocol.Rollout{Schema: protocol.MQTTSchemaVersion, Channel: *channel, State: protocol.RolloutRunning, MinExecuted: *minExec}
	if !protocol.ValidChannel(*channel) {
		return fail("channel %q: use lower-case letters, digits, . _ -", *channel)
	}
	if r.Waves, err = protocol.ParseWaves(*waves); err != nil {
		return fail("--waves: %v", err)
	}
	if r.MaxFailures, err = protocol.ParseShare(*maxFail); err != nil {
		return fail("--max-failures: %v", err)
	}
	if err := protocol.CheckMirrors(mirrorURLs); err != nil {
		return fail("--mirror-url: %v", err)
	}
	if *minExec < 0 || *minExec > 1_000_000 {
		return fail("--min-executed %d: want 0 to 1000000 devices", *minExec)
	}
	if *bake < 0 || *timeout < 0 {
		return fail("--bake and --device-timeout cannot be negative")
	}
	if *timeout > 0 && *timeout < time.Second {
		return fail("--device-timeout %s: give at least 1s, or 0 for no timeout", *timeout)
	}
	r.BakeSeconds, r.DeviceTimeoutSeconds = int64(bake.Seconds()), int64(timeout.Seconds())
	if r.Select, err = protocol.ParseSelector(*sel); err != nil {
		return fail("--select: %v", err)
	}
	kr, err := protocol.LoadKeyring(pubs...)
	if err != nil {
		return fail("%v", err)
	}
	targeting, err := targetingOptions(env, *targetingKey, *targetingLife) // keyset.go
	if err != nil {
		return fail("%v", err)
	}
	var manifests []*protocol.Manifest
	for _, path := range bundles {
		m, err := fleet.VerifyBundleFile(path, kr, time.Now())
		if err != nil {
			return fail("%v", err)
		}
		if len(manifests) > 0 {
			f := manifests[0]
			if m.App != f.App || m.Version != f.Version || m.Sequence != f.Sequence {
				return fail("%s is %s %s (sequence %d) but %s is %s %s (sequence %d): a rollout offers one release, one bundle per profile",
					path, m.App, m.Version, m.Sequence, bundles[0], f.App, f.Version, f.Sequence)
			}
			for i, o := range manifests {
				if o.Profile == m.Profile {
					return fail("%s and %s are both for profile %s: give one bundle per profile", bundles[i], path, m.Profile)
				}
			}
		}
		manifests = append(manifests, m)
	}
	m0 := manifests[0]
	r.App, r.Version, r.Sequence = m0.App, m0.Version, m0.Sequence
	for _, m := range manifests {
		r.Profiles = append(r.Profiles, m.Profile)
	}
	r.ID = newRolloutID(r.App, r.Sequence)

	c, err := bf.connect(ctx, env)
	if err != nil {
		return fail("%v", err)
	}
	defer func() { c.Disconnect(250) }() // c changes when a broker fails
	ctrl, _ := protocol.RolloutTopic(r.Channel, r.App)
	snap, err := fleet.Snapshot(ctx, c, []string{protocol.StatusFilter, protocol.AllRolloutsFilter, protocol.DriverTopic,
		protocol.AllReleasesFilter, protocol.AllDesiredFilter, protocol.KeySetTopic})
	if err != nil {
		return fail("%v", err)
	}
	// The driver promotes the candidates as they are, targeting included
	// (it names --channel): it holds no targeting key, so a candidate
	// without one would be refused at every wave and at promotion.
	if err := fleet.CheckTargetingFor(fleet.ReadKeySet(snap), targeting, r.Channel); err != nil {
		return fail("%v", err)
	}
	if targeting != nil {
		targeting.Rollout = r.ID
		if least := time.Duration(len(r.Waves)) * *bake; *targetingLife <= least {
			return fail("--targeting-lifetime %s is not longer than the rollout can take (%d waves × --bake %s): the candidates' targeting, which the promoted release keeps, would expire before the promotion; give a longer lifetime",
				*targetingLife, len(r.Waves), *bake)
		}
	}
	if b := snap[ctrl]; len(b) > 0 {
		if old, err := protocol.ParseRollout(b); err == nil && (old.State == protocol.RolloutRunning || old.State == protocol.RolloutPaused) {
			return fail("rollout %s of %s %s on channel %s is %s (wave %d of %d); one rollout per channel and app at a time: abort it first with 'edgefleet rollout abort %s'",
				old.ID, old.App, old.Version, old.Channel, old.State, old.Wave+1, len(old.Waves), old.ID)
		}
	}
	if err := rolloutSequenceCheck(r.Channel, manifests, snap); err != nil {
		return fail("%v", err)
	}
	// Selection from the devices' current statuses.
	var selected []string
	onChannel := 0
	labelSets := map[string]int{}
	for t, b := range snap {
		if tp, err := protocol.ParseTopic(t); err != nil || tp.Kind != protocol.KindStatus || len(b) == 0 {
			continue
		}
		s, err := protocol.ParseStatus(b)
		if err != nil || s.Channel != r.Channel {
			continue
		}
		onChannel++
		labelSets[labelsText(s.Labels)]++
		if !r.Select.Matches(s.Labels) {
			continue
		}
		for _, a := range s.Apps {
			if a.App == r.App {
				selected = append(selected, s.Device)
				break
			}
		}
	}
	if len(selected) == 0 {
		var sets []string
		for l, n := range labelSets {
			sets = append(sets, fmt.Sprintf("%s ×%d", l, n))
		}
		sort.Strings(sets)
		what := "every device"
		if len(r.Select) > 0 {
			what = "selector " + r.Select.String()
		}
		if onChannel == 0 {
			return fail("no known device follows channel %s (devices report their channel in their status; check --channel, or that the agents are connected)", r.Channel)
		}
		return fail("no known device matches: %s selects none of the %d devices on channel %s that run %s (their labels: %s); check --select, or that the devices run %s already",
			what, onChannel, r.Channel, r.App, strings.Join(sets, ", "), r.App)
	}
	sort.Strings(selected)
	now := time.Now().UTC()
	r.Cut = fleet.WaveCut(r.ID, selected, r.Waves, 0)
	r.Cuts = []uint64{r.Cut}
	r.WaveStarted = []time.Time{now}
	r.Created, r.Updated = now, now
	r.Revision = 1
	sizes := protocol.WaveSizes(r.Waves, len(selected))
	r.Reason = fmt.Sprintf("wave 1 of %d started: %d of %d selected devices", len(r.Waves), sizes[0], len(selected))
	msg, err := r.Marshal()
	if err != nil {
		return fail("%v", err)
	}
	var driver *protocol.DriverPresence
	if b := snap[protocol.DriverTopic]; len(b) > 0 {
		driver, _ = protocol.ParseDriverPresence(b)
	}
	// Publish: chunks and candidates first, the control message last, so
	// a member never sees a rollout without its candidate.
	for _, path := range bundles {
		opts := fleet.PublishOptions{Keyring: kr, Channel: r.Channel, Candidate: true, MirrorDir: *mirrorDir, Mirrors: mirrorURLs, Targeting: targeting}
		done := func() {}
		if !*quiet {
			opts.Progress, done = progress(env, env.stderr, path)
		}
		res, err := bf.publish(ctx, env, "rollout start", &c, path, opts)
		done()
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet rollout start: %v\nno rollout was started (the control message was not published); chunks and candidates already published are harmless: run the same command again\n", err)
			return 1
		}
		fmt.Fprintf(env.stdout, "published candidate %s %s (%s): %d chunks, %s\n", res.Manifest.App, res.Manifest.Version, res.Manifest.Profile, res.Chunks, humanBytes(res.Bytes))
	}
	if tok := c.Publish(ctrl, 1, true, msg); !waitToken(ctx, tok) {
		fmt.Fprintf(env.stderr, "edgefleet rollout start: publish the control message %s: %v; no rollout started (run the command again)\n", ctrl, tok.Error())
		return 1
	}
	fmt.Fprintf(env.stdout, "started rollout %s: %s %s (sequence %d) on channel %s to %d selected devices\n", r.ID, r.App, r.Version, r.Sequence, r.Channel, len(selected))
	fmt.Fprintf(env.stdout, "waves: %s\n", waveLine(r, sizes, len(selected)))
	fmt.Fprintf(env.stdout, "next: wave 1 (%s) installs; the driver widens the cut %s after each wave completes, and halts if more than %s of %d+ reporting devices fail\n",
		nDevices(sizes[0]), fleet.ShortDuration(*bake), pct(r.MaxFailures), r.MinExecuted)
	fmt.Fprintf(env.stdout, "follow it with: edgefleet rollout status %s --watch\n", r.ID)
	if driver == nil || !driver.Online {
		fmt.Fprintf(env.stderr, "edgefleet rollout start: WARNING: no rollout driver is online, so wave 1 will install but nothing advances or halts; run 'edgefleet broker' (it drives by default) or 'edgefleet rollout drive --broker ...'\n")
	}
	return 0
}

// nDevices is "1 device" or "n devices".
func nDevices(n int) string {
	if n == 1 {
		return "1 device"
	}
	return fmt.Sprintf("%d devices", n)
}

func waitToken(ctx context.Context, t paho.Token) bool {
	select {
	case <-t.Done():
		return t.Error() == nil
	case <-ctx.Done():
		return false
	case <-time.After(time.Minute):
		return false
	}
}

func labelsText(l protocol.Labels) string {
	if len(l) == 0 {
		return "no labels"
	}
	return l.String()
}

func newRolloutID(app string, seq uint64) string {
	var b [2]byte
	rand.Read(b[:])
	var s strings.Builder
	for _, r := range strings.ToLower(app) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			s.WriteRune(r)
		} else {
			s.WriteByte('-')
		}
	}
	a := strings.Trim(s.String(), "-")
	suffix := fmt.Sprintf("-%d-%s", seq, hex.EncodeToString(b[:]))
	if len(a)+len(suffix) > 64 {
		a = a[:64-len(suffix)]
	}
	if a == "" {
		a = "app"
	}
	return a + suffix
}

func pct(f float64) string {
	s := fmt.Sprintf("%.2f", f*100)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + "%"
}

// waveLine is "1 (1 device) ✓, 5% (1) ▶, 25% (5), 100% (20)".
func waveLine(r *protocol.Rollout, sizes []int, selected int) string {
	var parts []string
	for i, w := range r.Waves {
		p := fmt.Sprintf("%s (%d)", w, sizes[i])
		switch {
		case i < r.Wave || i == r.Wave && r.State == protocol.RolloutDone:
			p += " done"
		case i == r.Wave:
			p += " <- " + r.State
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// rolloutSet is the retained rollout state of a broker.
type rolloutSet struct {
	rollouts   []*protocol.Rollout
	candidates map[string]bool
	driver     *protocol.DriverPresence
}

func readRollouts(ctx context.Context, c paho.Client) (*rolloutSet, error) {
	snap, err := fleet.Snapshot(ctx, c, []string{protocol.AllRolloutsFilter, protocol.DriverTopic})
	if err != nil {
		return nil, err
	}
	return rolloutsFrom(snap, io.Discard), nil
}

func rolloutsFrom(snap map[string][]byte, warn io.Writer) *rolloutSet {
	s := &rolloutSet{candidates: map[string]bool{}}
	for t, b := range snap {
		if len(b) == 0 {
			continue
		}
		if t == protocol.DriverTopic {
			s.driver, _ = protocol.ParseDriverPresence(b)
			continue
		}
		tp, err := protocol.ParseTopic(t)
		if err != nil {
			continue
		}
		switch tp.Kind {
		case protocol.KindCandidate:
			s.candidates[t] = true
		case protocol.KindRollout:
			r, err := protocol.ParseRollout(b)
			if err != nil {
				fmt.Fprintf(warn, "edgefleet rollout: ignoring %s: %v\n", t, err)
				continue
			}
			s.rollouts = append(s.rollouts, r)
		}
	}
	sort.Slice(s.rollouts, func(i, j int) bool { return s.rollouts[i].Created.After(s.rollouts[j].Created) })
	return s
}

// find resolves a rollout id or channel/app.
func (s *rolloutSet) find(ref string) (*protocol.Rollout, error) {
	for _, r := range s.rollouts {
		if r.ID == ref || r.Channel+"/"+r.App == ref {
			return r, nil
		}
	}
	var known []string
	for _, r := range s.rollouts {
		known = append(known, fmt.Sprintf("%s (%s/%s, %s)", r.ID, r.Channel, r.App, r.State))
	}
	if len(known) == 0 {
		return nil, fmt.Errorf("no rollout %q: the broker holds no rollout", ref)
	}
	return nil, fmt.Errorf("no rollout %q; the broker holds: %s", ref, strings.Join(known, ", "))
}

func runRolloutStatus(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("rollout status", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	watch := fs.Bool("watch", false, "redraw as the rollout changes, until interrupted")
	fs.Usage = func() { rolloutUsage(env.stderr); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil || len(pos) > 1 {
		return 2
	}
	ref := ""
	if len(pos) == 1 {
		ref = pos[0]
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet rollout status: %v\n", err)
		return 1
	}
	defer c.Disconnect(250)
	show := func() (string, error) {
		snap, err := fleet.Snapshot(ctx, c, []string{protocol.AllRolloutsFilter, protocol.DriverTopic})
		if err != nil {
			return "", err
		}
		set := rolloutsFrom(snap, env.stderr)
		list := set.rollouts
		if ref != "" {
			r, err := set.find(ref)
			if err != nil {
				return "", err
			}
			list = []*protocol.Rollout{r}
		}
		var b strings.Builder
		if *asJSON {
			enc := json.NewEncoder(&b)
			enc.SetIndent("", "  ")
			enc.Encode(struct {
				Rollouts []*protocol.Rollout      `json:"rollouts"`
				Driver   *protocol.DriverPresence `json:"driver"`
			}{list, set.driver})
			return b.String(), nil
		}
		if len(list) == 0 {
			b.WriteString("no rollouts on the broker\n")
		}
		for _, r := range list {
			writeRollout(&b, r, time.Now())
		}
		b.WriteString(driverLine(set.driver, time.Now()))
		return b.String(), nil
	}
	out, err := show()
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet rollout status: %v\n", err)
		return 1
	}
	fmt.Fprint(env.stdout, out)
	if !*watch {
		return 0
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
		next, err := show()
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet rollout status: %v\n", err)
			return 1
		}
		if next != out {
			out = next
			if !*asJSON {
				fmt.Fprint(env.stdout, "\x1b[H\x1b[2J")
			}
			fmt.Fprint(env.stdout, out)
		}
	}
}

func driverLine(d *protocol.DriverPresence, now time.Time) string {
	switch {
	case d == nil:
		return "driver: none has run on this broker; 'edgefleet broker' drives by default, or run 'edgefleet rollout drive --broker ...'\n"
	case d.Online:
		return fmt.Sprintf("driver: %s on %s (pid %d), online since %s\n", d.Instance, d.Host, d.PID, d.Since.Local().Format("2006-01-02 15:04:05"))
	}
	return fmt.Sprintf("driver: GONE since %s (%s, was %s on %s pid %d): nothing advances or halts until one runs again ('edgefleet rollout drive --broker ...' or 'edgefleet broker')\n",
		d.Time.Local().Format("2006-01-02 15:04:05"), agoText(now, d.Time), d.Instance, d.Host, d.PID)
}

func agoText(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return fleet.ShortDuration(d) + " ago"
}

// writeRollout prints one rollout for an operator.
func writeRollout(w io.Writer, r *protocol.Rollout, now time.Time) {
	sel := "every device"
	if len(r.Select) > 0 {
		sel = r.Select.String()
	}
	fmt.Fprintf(w, "rollout %s: %s %s (sequence %d) on channel %s, %s: %s\n", r.ID, r.App, r.Version, r.Sequence, r.Channel, sel, strings.ToUpper(r.State))
	sizes := protocol.WaveSizes(r.Waves, r.Counts.Selected)
	fmt.Fprintf(w, "  waves:    %s\n", waveLine(r, sizes, r.Counts.Selected))
	c := r.Counts
	fmt.Fprintf(w, "  devices:  %d selected, %d in the cut: %d done, %d failed, %d pending, %d waiting for their window, %d skipped\n",
		c.Selected, c.Members, c.Done, c.Failed, c.Pending, c.Waiting, c.Skipped)
	if len(r.Failures) > 0 {
		fmt.Fprintf(w, "  failed:\n")
		for _, f := range r.Failures {
			fmt.Fprintf(w, "    %s (wave %d): %s\n", f.Device, f.Wave, f.Reason)
		}
		if c.Failed > len(r.Failures) {
			fmt.Fprintf(w, "    ... and %d more\n", c.Failed-len(r.Failures))
		}
	}
	if r.Reason != "" {
		fmt.Fprintf(w, "  reason:   %s\n", r.Reason)
	}
	fmt.Fprintf(w, "  next:     %s\n", nextStep(r, sizes, now))
}

// nextStep says what happens next, in a line an operator can act on.
func nextStep(r *protocol.Rollout, sizes []int, now time.Time) string {
	switch r.State {
	case protocol.RolloutHalted:
		return fmt.Sprintf("nothing: no further device starts %s %s; devices that committed keep %s (anti-rollback) and those that failed rolled back; the fix is a new release with sequence ≥ %d: edgefleet rollout start --channel %s ... BUNDLE",
			r.App, r.Version, r.Version, r.Sequence+1, r.Channel)
	case protocol.RolloutAborted:
		return fmt.Sprintf("nothing: aborted; devices that committed keep %s; start a new rollout when ready", r.Version)
	case protocol.RolloutDone:
		return "nothing: the rollout is finished"
	case protocol.RolloutPaused:
		return fmt.Sprintf("nothing until resumed: no member starts %s; 'edgefleet rollout resume %s' goes on (device timeouts and the bake restart then)", r.Version, r.ID)
	}
	c := r.Counts
	if c.Pending+c.Waiting > 0 {
		return fmt.Sprintf("wave %d completes when its %d pending and %d waiting devices report (each counts as failed after %s)", r.Wave+1, c.Pending, c.Waiting, fleet.ShortDuration(time.Duration(r.DeviceTimeoutSeconds)*time.Second))
	}
	at := r.BakeFrom
	if r.Resumed.After(at) {
		at = r.Resumed
	}
	at = at.Add(time.Duration(r.BakeSeconds) * time.Second)
	if r.Wave == len(r.Waves)-1 {
		return fmt.Sprintf("promotion of %s to channel %s at %s after the %s bake", r.Version, r.Channel, at.Local().Format("15:04:05"), fleet.ShortDuration(time.Duration(r.BakeSeconds)*time.Second))
	}
	return fmt.Sprintf("next wave (%s, %s) at %s after the %s bake", r.Waves[r.Wave+1], nDevices(sizes[r.Wave+1]), at.Local().Format("15:04:05"), fleet.ShortDuration(time.Duration(r.BakeSeconds)*time.Second))
}

func runRolloutCommand(ctx context.Context, env *cliEnv, verb string, args []string) int {
	fs := flag.NewFlagSet("rollout "+verb, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	fs.Usage = func() { rolloutUsage(env.stderr); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil || len(pos) != 1 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet rollout %s: %v\n", verb, err)
		return 1
	}
	defer c.Disconnect(250)
	r, err := rolloutCommand(ctx, c, verb, pos[0])
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet rollout %s: %v\n", verb, err)
		return 1
	}
	fmt.Fprintf(env.stdout, "rollout %s is %s: %s\n", r.ID, r.State, r.Reason)
	return 0
}

// rolloutCommand writes an operator's state change (Driver "", revision
// + 1) and reads it back: a driver writing at the same moment adopts the
// operator's message, so the change holds; if the rollout halted or
// finished meanwhile, that is said.
func rolloutCommand(ctx context.Context, c paho.Client, verb, ref string) (*protocol.Rollout, error) {
	user := os.Getenv("USER")
	if user == "" {
		user = "an operator"
	}
	return rolloutCommandBy(ctx, c, verb, ref, user)
}

// rolloutCommandBy is rolloutCommand for a named operator (the dashboard
// names its logged-in user); user appears in the rollout's reason.
func rolloutCommandBy(ctx context.Context, c paho.Client, verb, ref, user string) (*protocol.Rollout, error) {
	set, err := readRollouts(ctx, c)
	if err != nil {
		return nil, err
	}
	r, err := set.find(ref)
	if err != nil {
		return nil, err
	}
	want := map[string]string{"pause": protocol.RolloutPaused, "resume": protocol.RolloutRunning, "abort": protocol.RolloutAborted}[verb]
	now := time.Now().UTC()
	switch {
	case r.State == want:
		return r, nil
	case r.State == protocol.RolloutHalted && verb != "abort":
		return nil, fmt.Errorf("rollout %s halted and cannot %s: %s. Devices that committed keep %s (anti-rollback); the fix is a new release with sequence ≥ %d: edgefleet rollout start --channel %s ... BUNDLE (abort it first to clear its candidates)",
			r.ID, verb, r.Reason, r.Version, r.Sequence+1, r.Channel)
	case r.State == protocol.RolloutDone || r.State == protocol.RolloutAborted:
		return nil, fmt.Errorf("rollout %s is %s already; nothing to %s", r.ID, r.State, verb)
	case verb == "resume" && r.State != protocol.RolloutPaused:
		return nil, fmt.Errorf("rollout %s is %s, not paused", r.ID, r.State)
	}
	r.State, r.Driver, r.Updated = want, "", now
	r.Revision++
	switch verb {
	case "pause":
		r.Reason = fmt.Sprintf("paused by %s at %s: no member starts %s; resume with 'edgefleet rollout resume %s'", user, now.Format(time.RFC3339), r.Version, r.ID)
	case "resume":
		r.Resumed = now
		r.Reason = fmt.Sprintf("resumed by %s at %s", user, now.Format(time.RFC3339))
	case "abort":
		r.Reason = fmt.Sprintf("aborted by %s at %s: candidates cleared; devices that committed keep %s", user, now.Format(time.RFC3339), r.Version)
	}
	b, err := r.Marshal()
	if err != nil {
		return nil, err
	}
	ctrl, _ := protocol.RolloutTopic(r.Channel, r.App)
	if !waitToken(ctx, c.Publish(ctrl, 1, true, b)) {
		return nil, fmt.Errorf("publish %s: the broker did not acknowledge", ctrl)
	}
	if verb == "abort" {
		for _, p := range r.Profiles {
			ct, _ := protocol.CandidateTopic(r.Channel, r.App, p)
			if !waitToken(ctx, c.Publish(ct, 1, true, []byte{})) {
				return nil, fmt.Errorf("clear candidate %s: the broker did not acknowledge; run abort again", ct)
			}
		}
	}
	// Read it back: a driver online adopts the change and writes it again.
	deadline := time.Now().Add(3 * time.Second)
	for {
		set, err := readRollouts(ctx, c)
		if err != nil {
			return nil, err
		}
		got, err := set.find(r.ID)
		if err != nil {
			return nil, err
		}
		if got.State == want {
			return got, nil
		}
		if got.State == protocol.RolloutHalted || got.State == protocol.RolloutDone {
			return nil, fmt.Errorf("rollout %s is %s: %s", got.ID, got.State, got.Reason)
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the change did not hold: the broker shows " + got.State + "; run the command again")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runRolloutDrive(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("rollout drive", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	takeOver := fs.Bool("take-over", false, "start even though another driver's presence says it is online (it stops driving)")
	fs.Usage = func() { rolloutUsage(env.stderr); fs.PrintDefaults() }
	if err := parseFlags(fs, args); err != nil || fs.NArg() != 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	pass := bf.password
	if pass == "" && env.getenv != nil {
		pass = env.getenv("EDGEFLEET_BROKER_PASSWORD")
	}
	o := fleet.DriverOptions{
		Client:   fleet.ClientOptions{Broker: bf.url, Username: bf.username, Password: pass, CA: bf.ca, Cert: bf.cert, Key: bf.key},
		TakeOver: *takeOver,
		Logf:     func(f string, a ...any) { fmt.Fprintf(env.stderr, f+"\n", a...) },
		OnReady:  func() { fmt.Fprintln(env.stdout, "driving") },
	}
	err := fleet.RunDriver(ctx, o)
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(env.stderr, "edgefleet rollout drive: %v\n", err)
		return 1
	}
	return 0
}
