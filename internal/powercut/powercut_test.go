package powercut

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// Cut points besides the failpoints.
const (
	pointRandom    = "random"     // a uniform moment of the workload
	pointAfterDone = "after-done" // right after the workload's last step returned
	pointNone      = "none"       // no cut during the workload (calibration)
)

// Verdicts.
const (
	survived   = "survived"
	degraded   = "degraded"    // runs an allowed version, but state, an acknowledged step or the next install is wrong
	bricked    = "bricked"     // the app path runs no allowed version, or the agent does not answer
	notReached = "not-reached" // a failpoint the workload never reached
	stepFailed = "step-failed" // a workload step failed without a cut
	hostError  = "host-error"  // the machine did not boot or hung: not a verdict on the agent
)

// workloadsOf lists the workloads that pass a failpoint, the first one
// used by the smoke (the delta workload's smoke points are deltaSmoke).
// A delta is staged by patching, not copying: it passes every install
// failpoint but stage-mid, and its own delta-mid.
func workloadsOf(fp string) []string {
	switch {
	case strings.HasPrefix(fp, "rollback-"):
		return []string{"rollback"}
	case strings.HasPrefix(fp, "commit-"):
		return []string{"daemon", "mqtt", "self"}
	case fp == agent.DeltaFailpoint:
		return []string{"delta"}
	case fp == "stage-mid":
		return []string{"sideload", "daemon", "mqtt", "self"}
	}
	return []string{"sideload", "daemon", "mqtt", "delta", "self"}
}

// The self workload is the agent updating itself (app edgefleet-agent,
// 1.0.0 → 2.0.0, re-exec, trial, commit) under a respawning init.
var workloads = []string{"sideload", "daemon", "rollback", "mqtt", "delta", "self"}

// failpoints: every named point, the full install's and the delta's.
var failpoints = append(slices.Clone(agent.Failpoints), agent.DeltaFailpoint)

// deltaSmoke: the delta workload's cuts in the smoke besides a random
// moment — its own failpoint, the patched file before its fsync, and the
// swap right after the patched file took the app path's name.
var deltaSmoke = []string{agent.DeltaFailpoint, "stage-before-sync", "swap-after-rename"}

// selfSmoke: the self workload's cuts in the smoke besides a random
// moment — the new agent renamed over the old one, the swap done but not
// recorded, and the new agent's commit decided but not recorded.
var selfSmoke = []string{"swap-after-rename", "swap-before-record", "commit-before-record"}

// cut is one planned power cut.
type cut struct {
	workload, mount, point string
}

func (c cut) String() string { return c.workload + "/" + c.mount + "/" + c.point }

// outcome is one cut's result.
type outcome struct {
	cut
	verdict  string
	why      string
	boot     time.Duration // qemu start to PC:UP (cut boot)
	work     time.Duration // PC:GO to PC:DONE (uncut workloads only)
	cutAfter time.Duration // PC:GO to the cut
	check    time.Duration // check boot: qemu start to PC:END
	log      string
}

// statusJSON is the part of `edgefleet-agent status --json` the checks read.
type statusJSON struct {
	Starting     string `json:"starting"`
	AgentVersion string `json:"agent_version"`
	Apps         []struct {
		App, Version, State, LastError string
	} `json:"apps"`
}

func parseStatus(s string) (app struct{ App, Version, State, LastError string }, ok bool) {
	var st statusJSON
	if json.Unmarshal([]byte(s), &st) != nil {
		return app, false
	}
	return appOf(st, "hello")
}

func appOf(st statusJSON, name string) (app struct{ App, Version, State, LastError string }, ok bool) {
	for _, a := range st.Apps {
		if a.App == name {
			return a, true
		}
	}
	return app, false
}

// runCut boots the machine twice: the workload with the power cut, then
// the check.
func (g *guest) runCut(ctx context.Context, c cut, delay time.Duration) outcome {
	o := outcome{cut: c}
	disk := filepath.Join(g.dir, fmt.Sprintf("disk-%d.img", rand.Int64()))
	defer os.Remove(disk)
	golden := g.golden
	if c.workload == "self" {
		golden = g.goldenSelf
	}
	if err := cloneFile(golden, disk); err != nil {
		o.verdict, o.why = hostError, err.Error()
		return o
	}
	fp := ""
	if slices.Contains(failpoints, c.point) {
		fp = " pc.fp=" + c.point
	}
	dev := ""
	if c.workload == "mqtt" {
		// A device of its own on the host's broker, 1.1.0 assigned to it.
		dev = fmt.Sprintf("pc-%d", rand.Int64N(1e12))
		if err := g.assign(ctx, dev, "1.1.0"); err != nil {
			o.verdict, o.why = hostError, "publish 1.1.0: "+err.Error()
			return o
		}
	}
	extra := fp
	if dev != "" {
		extra += " pc.dev=" + dev
	}
	var goAt time.Duration
	done := false
	b1 := g.boot(ctx, disk, "pc.phase=cut pc.workload="+c.workload+" pc.mount="+c.mount+extra, 5*time.Minute, func(l line, cutNow func()) bool {
		switch {
		case l.text == "PC:GO":
			goAt = l.at
			if c.point == pointRandom {
				time.AfterFunc(delay, cutNow)
			}
		case l.text == "PC:KILLED":
			return true
		case l.text == "PC:DONE":
			done = true
			o.work = l.at - goAt
			return true
		case strings.HasPrefix(l.text, "PC:MOUNTFAIL"), strings.HasPrefix(l.text, "PC:NODAEMON"), strings.Contains(l.text, "Kernel panic"):
			return true
		}
		return false
	})
	o.log = "--- cut boot (" + c.String() + ")\n" + b1.text()
	if up, ok := b1.find("PC:UP"); ok {
		o.boot = up.at
	}
	if b1.err != nil || goAt == 0 {
		o.verdict, o.why = hostError, fmt.Sprintf("the cut boot did not reach the workload: %v", b1.err)
		return o
	}
	if last := b1.lines[len(b1.lines)-1]; true {
		o.cutAfter = last.at - goAt
	}
	if l, ok := b1.find("PC:FAILSTEP"); ok {
		o.verdict, o.why = stepFailed, "a workload step failed before the power cut: "+l.text
		return o
	}
	if fp != "" {
		if _, ok := b1.find("PC:KILLED"); !ok {
			o.verdict, o.why = notReached, "the workload finished without reaching the failpoint"
			return o
		}
	}
	_ = done
	// What must have survived: the last acknowledged state, unless a
	// later step had begun (it may legitimately change it).
	must, mustSelf := "", ""
	for _, l := range b1.lines {
		if f := strings.Fields(l.text); len(f) == 3 && f[0] == "PC:ACK" {
			must = f[2]
		} else if len(f) == 3 && f[0] == "PC:ACKSELF" {
			mustSelf = f[2]
		} else if strings.HasPrefix(l.text, "PC:BEGIN") {
			must, mustSelf = "", ""
		}
	}

	check := "pc.phase=check pc.workload=" + c.workload + " pc.mount=" + c.mount
	if dev != "" {
		check += " pc.dev=" + dev
	}
	var assignErr error
	b2 := g.boot(ctx, disk, check, 5*time.Minute, func(l line, _ func()) bool {
		if l.text == "PC:CATCHUP" {
			assignErr = g.assign(ctx, dev, "1.2.0")
		}
		return l.text == "PC:END" || strings.HasPrefix(l.text, "PC:MOUNTFAIL") || strings.Contains(l.text, "Kernel panic")
	})
	if assignErr != nil {
		o.verdict, o.why = hostError, "publish 1.2.0: "+assignErr.Error()
		return o
	}
	o.log += "--- check boot\n" + b2.text()
	if end, ok := b2.find("PC:END"); ok {
		o.check = end.at
	}
	o.verdict, o.why = classify(b2, must)
	if c.workload == "self" && o.verdict != hostError && o.verdict != bricked {
		if v, why := classifySelf(b2, mustSelf); v != survived {
			o.verdict = v
			if o.why != "" {
				why = o.why + "; " + why
			}
			o.why = why
		}
	}
	return o
}

// classifySelf judges the agent itself after the self workload: the
// daemon that answers is the binary at the agent's path, an allowed
// version, and the database agrees.
func classifySelf(b *bootResult, must string) (string, string) {
	v := b.value("PC:SELF")
	if v != "1.0.0" && v != "2.0.0" {
		return bricked, fmt.Sprintf("after recovery the agent's path holds %q, not 1.0.0 or 2.0.0", v)
	}
	var st statusJSON
	if json.Unmarshal([]byte(b.block("STATUS")), &st) != nil {
		return bricked, "status --json did not answer"
	}
	a, ok := appOf(st, agent.SelfApp)
	if !ok {
		return degraded, "status has no app " + agent.SelfApp
	}
	var whys []string
	if st.AgentVersion != v {
		whys = append(whys, fmt.Sprintf("the daemon that answers is agent %q, the agent's path holds %s", st.AgentVersion, v))
	}
	if a.Version != v {
		whys = append(whys, fmt.Sprintf("the database says agent %s %s, the agent's path holds %s", a.State, a.Version, v))
	}
	if a.State != agent.StateCommitted && a.State != agent.StateRolledBack {
		whys = append(whys, fmt.Sprintf("after recovery the agent is %q: %s", a.State, a.LastError))
	}
	if must != "" && v != must {
		whys = append(whys, fmt.Sprintf("an acknowledged self-update was lost: agent %s was acknowledged, the device runs %s", must, v))
	}
	if len(whys) > 0 {
		return degraded, strings.Join(whys, "; ")
	}
	return survived, ""
}

// classify judges the check boot.
func classify(b *bootResult, must string) (string, string) {
	if _, ok := b.find("PC:MOUNTFAIL"); ok {
		return bricked, "the disk does not mount"
	}
	if _, ok := b.find("PC:END"); !ok {
		return hostError, "the check boot did not finish"
	}
	if _, ok := b.find("PC:NODAEMON"); ok {
		return bricked, "the agent daemon does not start"
	}
	app := b.value("PC:APP")
	if app != "1.0.0" && app != "1.1.0" {
		return bricked, fmt.Sprintf("after recovery the app path runs %q, not 1.0.0 or 1.1.0", app)
	}
	st, ok := parseStatus(b.block("STATUS"))
	if !ok {
		return bricked, "status --json did not answer with the app"
	}
	var whys []string
	if st.Version != app {
		whys = append(whys, fmt.Sprintf("the database says %s %s, the app path runs %s", st.State, st.Version, app))
	}
	if st.State != agent.StateCommitted && st.State != agent.StateRolledBack {
		whys = append(whys, fmt.Sprintf("after recovery the app is %q: %s", st.State, st.LastError))
	}
	if must != "" && app != must {
		whys = append(whys, fmt.Sprintf("an acknowledged step was lost: %s was acknowledged, the device runs %s", must, app))
	}
	for _, l := range b.lines {
		if strings.Contains(l.text, "lost in a power cut") {
			whys = append(whys, "recovery repaired a lost write: "+strings.TrimSpace(l.text))
			break
		}
	}
	fin, ok := parseStatus(b.block("FINAL"))
	if n := b.value("PC:NEXT"); n != "0" || !ok || fin.State != agent.StateCommitted || fin.Version != "1.2.0" || b.value("PC:FINALAPP") != "1.2.0" {
		whys = append(whys, fmt.Sprintf("the next install did not commit (exit %s, %s %s, app path %s)", n, fin.State, fin.Version, b.value("PC:FINALAPP")))
	}
	if len(whys) > 0 {
		return degraded, strings.Join(whys, "; ")
	}
	return survived, ""
}

func cloneFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// plan is the list of cuts for a mode.
func plan(mode string, n int) []cut { return only(planAll(mode, n)) }

func planAll(mode string, n int) []cut {
	var cuts []cut
	// Each failpoint under each mount set in turn, random cuts of each
	// workload under each mount set, and a cut right after each workload.
	round := func(r int) {
		for i, fp := range failpoints {
			ws := workloadsOf(fp)
			if mode == "smoke" {
				ws = ws[:1]
				if fp != agent.DeltaFailpoint && slices.Contains(deltaSmoke, fp) {
					ws = append(ws, "delta")
				}
				if slices.Contains(selfSmoke, fp) {
					ws = append(ws, "self")
				}
			}
			for j, w := range ws {
				cuts = append(cuts, cut{w, mountSets[(i+j+r)%len(mountSets)], fp})
			}
		}
		for i, w := range workloads {
			cuts = append(cuts, cut{w, mountSets[(i+r)%len(mountSets)], pointRandom})
			if mode != "smoke" {
				cuts = append(cuts, cut{w, mountSets[(i+r+1)%len(mountSets)], pointAfterDone})
			}
		}
	}
	if mode == "smoke" {
		// Every failpoint once, each workload cut at a random moment and
		// the deltaSmoke and selfSmoke points: 28 cuts, the mount option sets in turn (after-done cuts run in
		// TestPowerCutCatchesMissingFsync).
		round(0)
		return cuts
	}
	for r := 0; len(cuts) < n; r++ {
		round(r)
		// Long runs weigh random moments more.
		for j := 0; j < 3; j++ {
			for _, m := range mountSets {
				for _, w := range workloads {
					cuts = append(cuts, cut{w, m, pointRandom})
				}
			}
		}
	}
	return cuts[:n]
}

// only keeps the cuts of the workloads in EDGEFLEET_POWERCUT_ONLY
// (comma-separated; default all).
// and the cut points in EDGEFLEET_POWERCUT_POINTS (same).
func only(cuts []cut) []cut {
	if o := os.Getenv("EDGEFLEET_POWERCUT_ONLY"); o != "" {
		ws := strings.Split(o, ",")
		cuts = slices.DeleteFunc(cuts, func(c cut) bool { return !slices.Contains(ws, c.workload) })
	}
	if o := os.Getenv("EDGEFLEET_POWERCUT_POINTS"); o != "" {
		ps := append(strings.Split(o, ","), pointNone)
		cuts = slices.DeleteFunc(cuts, func(c cut) bool { return !slices.Contains(ps, c.point) })
	}
	return cuts
}

// suite runs cuts on g with jobs machines at a time.
type suite struct {
	t    *testing.T
	g    *guest
	jobs int
	// work is each workload's uncut duration (calibration), for the
	// random moments.
	work map[string]time.Duration
	// deadline, when set, stops starting cuts (EDGEFLEET_POWERCUT_BUDGET).
	deadline time.Time
}

func jobs() int {
	if n, err := strconv.Atoi(os.Getenv("EDGEFLEET_POWERCUT_JOBS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// calibrate runs each workload once without a cut; each must survive.
func (s *suite) calibrate(ctx context.Context) []outcome {
	s.work = map[string]time.Duration{}
	var cuts []cut
	for _, w := range workloads {
		cuts = append(cuts, cut{w, mountSets[0], pointNone})
	}
	outs := s.run(ctx, only(cuts))
	for _, o := range outs {
		if o.verdict != survived || o.work == 0 {
			s.t.Fatalf("calibration %s (no power cut) did not survive: %s: %s\n%s", o.cut, o.verdict, o.why, o.log)
		}
		s.work[o.workload] = o.work
	}
	return outs
}

func (s *suite) run(ctx context.Context, cuts []cut) []outcome {
	out := make([]outcome, len(cuts))
	sem := make(chan struct{}, s.jobs)
	var wg sync.WaitGroup
	started := 0
	for i, c := range cuts {
		sem <- struct{}{}
		if !s.deadline.IsZero() && time.Now().After(s.deadline) {
			<-sem
			s.t.Logf("time budget spent: %d of %d cuts started", started, len(cuts))
			break
		}
		started++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var delay time.Duration
			if w := s.work[c.workload]; w > 0 {
				delay = time.Duration(rand.Int64N(int64(w) * 11 / 10))
			}
			out[i] = s.g.runCut(ctx, c, delay)
			switch os.Getenv("EDGEFLEET_POWERCUT_VERBOSE") {
			case "":
			case "logs":
				s.t.Logf("%s: %s %s\n%s", c, out[i].verdict, out[i].why, out[i].log)
			default:
				s.t.Logf("%s: %s %s", c, out[i].verdict, out[i].why)
			}
		}()
	}
	wg.Wait()
	return out[:started]
}

// report is the per workload / mount / point table, as Markdown.
func report(outs []outcome) string {
	type key struct{ w, m, p string }
	type row struct {
		n                          int
		counts                     map[string]int
		boot, check, work, workMax time.Duration
		nwork                      int
	}
	rows := map[key]*row{}
	var keys []key
	for _, o := range outs {
		k := key{o.workload, o.mount, o.point}
		if slices.Contains(failpoints, o.point) {
			k.m = "(rotating)"
		}
		r := rows[k]
		if r == nil {
			r = &row{counts: map[string]int{}}
			rows[k] = r
			keys = append(keys, k)
		}
		r.n++
		r.counts[o.verdict]++
		r.boot += o.boot
		r.check += o.check
		if o.work > 0 {
			r.work += o.work
			r.nwork++
		}
	}
	slices.SortFunc(keys, func(a, b key) int { return strings.Compare(a.w+a.p+a.m, b.w+b.p+b.m) })
	var b strings.Builder
	b.WriteString("| workload | mount options | cut point | cuts | survived | degraded | bricked | not reached | step failed | host error | mean boot | mean check boot |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	tot := map[string]int{}
	for _, k := range keys {
		r := rows[k]
		for v, n := range r.counts {
			tot[v] += n
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %d | %d | %d | %d | %.1fs | %.1fs |\n", k.w, k.m, k.p, r.n,
			r.counts[survived], r.counts[degraded], r.counts[bricked], r.counts[notReached], r.counts[stepFailed], r.counts[hostError],
			(r.boot / time.Duration(r.n)).Seconds(), (r.check / time.Duration(r.n)).Seconds())
	}
	fmt.Fprintf(&b, "| **all** | | | %d | %d | %d | %d | %d | %d | %d | | |\n", len(outs), tot[survived], tot[degraded], tot[bricked], tot[notReached], tot[stepFailed], tot[hostError])
	return b.String()
}

func mode(t *testing.T) string {
	m := os.Getenv("EDGEFLEET_POWERCUT")
	if m == "" {
		t.Skip("SKIP: the power-cut suite boots emulated machines; set EDGEFLEET_POWERCUT=smoke (scripts/test.sh does) or long (scripts/powercut.sh)")
	}
	if testing.Short() {
		t.Skip("SKIP: the power-cut suite is not run in -short")
	}
	return m
}

func writeReport(t *testing.T, name, s string) {
	t.Log("\n" + s)
	if dir := os.Getenv("EDGEFLEET_POWERCUT_REPORT"); dir != "" {
		must(t, os.MkdirAll(dir, 0o755))
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644))
	}
}

// TestPowerCut: the agent as shipped survives every cut.
func TestPowerCut(t *testing.T) {
	m := mode(t)
	h := findHost(t)
	n, _ := strconv.Atoi(os.Getenv("EDGEFLEET_POWERCUT_CUTS"))
	if n <= 0 {
		n = 1000
	}
	start := time.Now()
	g := buildGuest(t, h, "")
	s := &suite{t: t, g: g, jobs: jobs()}
	if d, err := time.ParseDuration(os.Getenv("EDGEFLEET_POWERCUT_BUDGET")); err == nil && d > 0 {
		s.deadline = start.Add(d)
	}
	ctx := context.Background()
	outs := s.calibrate(ctx)
	t.Logf("uncut workloads: %v (boot %.1fs)", s.work, outs[0].boot.Seconds())
	outs = append(outs, s.run(ctx, plan(m, n))...)
	var uncut []string
	for _, w := range sortedKeys(s.work) {
		uncut = append(uncut, fmt.Sprintf("%s %.1fs", w, s.work[w].Seconds()))
	}
	writeReport(t, "powercut.md", report(outs)+fmt.Sprintf("\n%d cuts (%d boots) in %s with %d machines at a time; uncut workloads (install through trial and commit where the workload waits for it): %s.\n",
		len(outs), 2*len(outs), time.Since(start).Round(time.Second), s.jobs, strings.Join(uncut, ", ")))
	for _, o := range outs {
		switch o.verdict {
		case survived:
		case hostError:
			t.Logf("host error (not a verdict on the agent): %s: %s", o.cut, o.why)
		default:
			t.Errorf("%s: %s: %s\n%s", o.cut, o.verdict, o.why, o.log)
		}
	}
}

// TestPowerCutCatchesMissingFsync: the same cuts against an agent whose
// staged file is not fsynced must report bricked or degraded devices; if
// they all survive, the suite has stopped proving anything.
func TestPowerCutCatchesMissingFsync(t *testing.T) {
	mode(t)
	h := findHost(t)
	g := buildGuest(t, h, "edgefleet_powercut_nosync")
	s := &suite{t: t, g: g, jobs: jobs()}
	var cuts []cut
	for _, m := range mountSets {
		cuts = append(cuts, cut{"sideload", m, pointAfterDone})
	}
	cuts = append(cuts, cut{"sideload", mountSets[2], "swap-before-record"})
	if os.Getenv("EDGEFLEET_POWERCUT") != "smoke" {
		for _, m := range mountSets {
			cuts = append(cuts, cut{"daemon", m, pointAfterDone}, cut{"mqtt", m, pointAfterDone}, cut{"sideload", m, "swap-before-record"},
				cut{"delta", m, pointAfterDone}) // the patched file goes through the same unsynced close
		}
	}
	outs := s.run(context.Background(), cuts)
	writeReport(t, "powercut-nosync.md", report(outs))
	bad := 0
	for _, o := range outs {
		if o.verdict == degraded || o.verdict == bricked {
			bad++
			t.Logf("caught: %s: %s: %s", o.cut, o.verdict, o.why)
		}
	}
	if bad == 0 {
		for _, o := range outs {
			t.Logf("%s: %s %s\n%s", o.cut, o.verdict, o.why, o.log)
		}
		t.Fatalf("the agent without the staged file's fsync survived all %d cuts: the power-cut suite no longer catches a missing fsync", len(outs))
	}
	t.Logf("the broken build was caught in %d of %d cuts", bad, len(outs))
}
