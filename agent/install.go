package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/stayup"
	"github.com/edgefleet/edgefleet/protocol"
)

// Pipeline steps, as reported in Progress.Step.
const (
	StepVerify  = "verify"
	StepCompat  = "compat"
	StepStorage = "storage"
	StepStage   = "stage"
	StepProbe   = "probe"
	StepSwap    = "swap"
)

// Progress reports where an install is. Done/Total are executable bytes
// during "stage" and zero otherwise.
type Progress struct {
	App   string `json:"app"`
	Step  string `json:"step"`
	Done  int64  `json:"done,omitempty"`
	Total int64  `json:"total,omitempty"`
}

// Result is a successful install: the app is on trial with Version.
type Result struct {
	App      string `json:"app"`
	Version  string `json:"version"`
	Sequence uint64 `json:"sequence"`
	// Previous is the version kept as <path>.prev ("" when there was none).
	Previous string `json:"previous,omitempty"`
	Path     string `json:"path"`
	// KeySet says what became of the key set the bundle carried ("" none,
	// or one not newer than the one held).
	KeySet string `json:"keyset,omitempty"`
}

// stageBufSize is the one buffer staging copies through.
const stageBufSize = 64 << 10

// Check is a dry run of the pipeline: verify, compatibility, storage, and a
// stage plus probe into a temporary file next to the target that is removed
// afterwards. Neither the app's binary nor the state database changes.
func (a *Agent) Check(ctx context.Context, bundle io.Reader) (*protocol.Manifest, error) {
	m, _, err := a.CheckKeySet(ctx, bundle)
	return m, err
}

// CheckKeySet is Check that also says what the bundle's key set would do
// ("" when it has none or nothing to say); a dry run stores no key set
// (bundle_keyset.go).
func (a *Agent) CheckKeySet(ctx context.Context, bundle io.Reader) (*protocol.Manifest, string, error) {
	b, ks, err := a.openBundle(bundle, true)
	if err != nil {
		return nil, ks.note, err
	}
	payload, err := b.Payload()
	if err != nil {
		return nil, ks.note, err
	}
	if _, err := a.run(ctx, b.Manifest, payload, nil, true); err != nil {
		return b.Manifest, ks.note, err
	}
	return b.Manifest, ks.note, nil
}

// Install runs the whole pipeline on a bundle stream: verify, compat,
// storage, stage, probe, swap. On success the app is on trial with the new
// binary at its path and the previous one at <path>.prev; the caller (the
// daemon) restarts it and later calls Commit or Rollback. On a refusal
// nothing changed but the app's last error and history.
//
// A key set the bundle carries (keyset.json) is judged first, as one from
// the broker, and stored when it is newer and valid, whatever becomes of
// the bundle; one that is refused is ignored and reported
// (bundle_keyset.go, protocol/SPEC.md §2).
func (a *Agent) Install(ctx context.Context, bundle io.Reader, progress func(Progress)) (*Result, error) {
	b, ks, err := a.openBundle(bundle, false)
	if err != nil {
		return nil, err
	}
	payload, err := b.Payload()
	if err != nil {
		return nil, err
	}
	res, err := a.run(ctx, b.Manifest, payload, progress, false)
	if res != nil {
		res.KeySet = ks.note
	}
	return res, err
}

// InstallParts is Install for a release that arrives in parts (the MQTT
// transport): the manifest bytes and signature, then the encoded payload
// stream, whose chunks are checked against the signed hashes as they pass.
func (a *Agent) InstallParts(ctx context.Context, rawManifest, rawSig []byte, payload io.Reader, progress func(Progress)) (*Result, error) {
	m, _, err := a.keys.VerifyManifest(rawManifest, rawSig)
	if err != nil {
		return nil, fmt.Errorf("verify manifest: %w", err)
	}
	return a.run(ctx, m, protocol.NewChunkVerifier(payload, &m.Payload, nil), progress, false)
}

// targetOf converts the signed target into hardware's terms.
func targetOf(t protocol.Target) hardware.Target {
	return hardware.Target{
		GOOS: t.GOOS, GOARCH: t.GOARCH, GOARM: t.GOARM, GOAMD64: t.GOAMD64, GOMIPS: t.GOMIPS,
		ELFClass: t.ELF.Class, ELFMachine: t.ELF.Machine, ELFBigEndian: t.ELF.Endian == "big",
	}
}

// lock marks app busy; the returned func releases it.
func (a *Agent) lock(app string) (func(), error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busy[app] {
		return nil, fmt.Errorf("another install or rollback of %s is running; try again when it is done: %w", app, ErrBusy)
	}
	a.busy[app] = true
	return func() {
		a.mu.Lock()
		delete(a.busy, app)
		delete(a.progress, app)
		a.mu.Unlock()
	}, nil
}

func (a *Agent) setProgress(p Progress, cb func(Progress)) {
	a.mu.Lock()
	a.progress[p.App] = &p
	a.mu.Unlock()
	if cb != nil {
		cb(p)
	}
}

// run is the pipeline after the signature verified. payload is the
// verified encoded payload stream.
func (a *Agent) run(ctx context.Context, m *protocol.Manifest, payload io.Reader, progress func(Progress), dry bool) (*Result, error) {
	app, ok := a.cfg.App(m.App)
	if !ok {
		names := make([]string, len(a.cfg.Apps))
		for i, c := range a.cfg.Apps {
			names[i] = c.Name
		}
		return nil, fmt.Errorf("this bundle is for app %q, which is not configured on this device (configured: %s); it was sent to the wrong device or the config lacks the app: %w",
			m.App, strings.Join(names, ", "), ErrUnknownApp)
	}
	if !dry {
		unlock, err := a.lock(app.Name)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	res, staged, err := a.pipeline(ctx, app, m, payload, progress, dry)
	if err == nil {
		return res, nil
	}
	if staged != "" {
		removeStaged(staged)
	}
	if !dry && errors.Is(err, ErrDelta) {
		a.deltaFailed(app, m, err)
	} else if !dry && !errors.Is(err, ErrBusy) {
		a.refused(app, m, err)
	}
	return nil, err
}

// recordRefusal records that m was refused before any install step (the
// MQTT transport refuses what this CPU cannot run before fetching it): the
// app's last error and history only. It runs without the app's install
// lock, so it must never touch the state of an install in progress.
func (a *Agent) recordRefusal(app *AppConfig, m *protocol.Manifest, cause error) {
	now := a.opts.Now()
	if _, err := a.update(app.Name, func(r *record) error {
		r.LastError = fmt.Sprintf("%s %s refused: %v", m.App, m.Version, cause)
		r.event(now, "refused", m.Version, cause.Error())
		return nil
	}); err != nil {
		a.opts.Logf("record refusal of %s: %v", m, err)
	}
}

// refused records a refusal by the pipeline, which holds the app's lock:
// the prior state comes back, the error is kept.
func (a *Agent) refused(app *AppConfig, m *protocol.Manifest, cause error) {
	now := a.opts.Now()
	if r, err := a.load(app.Name); err == nil && r.Pending != nil && r.Pending.Sequence == m.Sequence && (r.State == StateStaging || r.State == StateStaged) {
		if err := a.unraiseFloor(app.Name, r.Pending); err != nil {
			a.opts.Logf("lower the anti-rollback floor after the refusal of %s: %v", m, err)
		}
	}
	_, err := a.update(app.Name, func(r *record) error {
		if r.Pending != nil && r.Pending.Sequence == m.Sequence && (r.State == StateStaging || r.State == StateStaged) {
			r.State = r.Pending.PriorState
			r.Pending = nil
		}
		r.LastError = fmt.Sprintf("%s %s refused: %v", m.App, m.Version, cause)
		r.event(now, "refused", m.Version, cause.Error())
		return nil
	})
	if err != nil {
		a.opts.Logf("record refusal of %s: %v", m, err)
	}
	if r, err := a.load(app.Name); err == nil && r.State == StateSwapping {
		// The swap itself failed (I/O): settle it now rather than at boot.
		if _, err := a.recoverApp(context.Background(), app, r, false); err != nil {
			a.opts.Logf("settle interrupted swap of %s: %v", app.Name, err)
		}
	}
}

func (a *Agent) pipeline(ctx context.Context, app *AppConfig, m *protocol.Manifest, payload io.Reader, progress func(Progress), dry bool) (_ *Result, staged string, _ error) {
	step := func(s string) { a.setProgress(Progress{App: app.Name, Step: s}, progress) }
	if dry {
		step = func(s string) {
			if progress != nil {
				progress(Progress{App: app.Name, Step: s})
			}
		}
	}

	// 1. Verify: the signature already checked; now expiry and anti-rollback.
	step(StepVerify)
	if err := m.CheckExpiry(a.trustedNow()); err != nil {
		return nil, "", err
	}
	r, err := a.load(app.Name)
	if err != nil {
		return nil, "", err
	}
	switch r.State {
	case StateStaging, StateStaged, StateSwapping, StateRollingBack:
		if dry {
			a.mu.Lock()
			running := a.busy[app.Name]
			a.mu.Unlock()
			if running {
				return nil, "", fmt.Errorf("an install or rollback of %s is running (%s); check again when it is done: %w", app.Name, r.State, ErrBusy)
			}
			return nil, "", fmt.Errorf("an earlier install or rollback of %s was interrupted (%s); start the agent so it recovers, then check again: %w", app.Name, r.State, ErrBusy)
		}
		if _, err := a.recoverApp(ctx, app, r, false); err != nil {
			return nil, "", err
		}
		if r, err = a.load(app.Name); err != nil {
			return nil, "", err
		}
	}
	if err := a.checkSequence(r, m); err != nil {
		return nil, "", err
	}

	// 2. Compatibility of the signed target with this CPU.
	step(StepCompat)
	target := targetOf(m.Target)
	if err := a.cpu.CanRun(target); err != nil {
		return nil, "", fmt.Errorf("%s %s: %w", m.App, m.Version, err)
	}
	if err := a.checkDecoderMemory(m); err != nil {
		return nil, "", err
	}
	// Busy only after the final refusals: a release this device can never
	// install must say so, not "try again later".
	if r.State == StateTrial {
		return nil, "", fmt.Errorf("%s %s is still on trial; it must commit or roll back before %s can be installed: %w", app.Name, r.Version, m.Version, ErrBusy)
	}

	// 3. Storage: the staged file is the new binary (decoded straight into
	// it); the old binary stays alive as .prev, so its blocks are not freed.
	step(StepStorage)
	// The directory must be one only root (or the agent's user) can
	// change, or its owner could plant a link where root writes
	// (safefile.go); checked before anything is created in it.
	dir := filepath.Dir(app.Path)
	if err := ensureAppDir(app); err != nil {
		return nil, "", err
	}
	st, err := a.opts.Storage(dir)
	if err != nil {
		return nil, "", fmt.Errorf("read free storage on %s: %w", dir, err)
	}
	free := st.Free
	if fi, err := os.Lstat(app.stagedPath()); err == nil && fi.Mode().IsRegular() && !dry {
		free += fi.Size() // a leftover staged file is removed first
	}
	need := m.Executable.Size + m.MinFreeStorage
	if free < need {
		return nil, "", fmt.Errorf("%s %s needs %s (binary %s + reserve %s), %s free on %s; free some space or pack a smaller build: %w",
			m.App, m.Version, hardware.Size(need), hardware.Size(m.Executable.Size), hardware.Size(m.MinFreeStorage), hardware.Size(st.Free), dir, ErrNoSpace)
	}

	// 4. Stage.
	oldSum, err := fileSHA256(app.Path)
	if err != nil {
		return nil, "", fmt.Errorf("read the current %s: %w", app.Path, err)
	}
	if !dry {
		now := a.opts.Now()
		if _, err := a.update(app.Name, func(r *record) error {
			r.Pending = &pending{Version: m.Version, Sequence: m.Sequence, SHA256: m.Executable.SHA256, Size: m.Executable.Size, OldSHA256: oldSum, PriorState: r.State, Started: now.UTC()}
			r.State = StateStaging
			return nil
		}); err != nil {
			return nil, "", err
		}
		failpoint("stage-after-record")
		staged = app.stagedPath()
	} else {
		f, err := os.CreateTemp(dir, "."+filepath.Base(app.Path)+".check-*")
		if err != nil {
			return nil, "", fmt.Errorf("create a check file in %s: %w", dir, err)
		}
		staged = f.Name()
		err = f.Chmod(0o755) // on the descriptor: never through a link
		f.Close()
		if err != nil {
			return nil, staged, err
		}
	}
	if err := a.stage(ctx, app, m, payload, staged, progress, dry); err != nil {
		return nil, staged, err
	}
	if err := checkELF(staged, target); err != nil {
		return nil, staged, fmt.Errorf("%s %s: %w", m.App, m.Version, err)
	}
	if !dry {
		failpoint("staged-before-record")
		if _, err := a.update(app.Name, func(r *record) error { r.State = StateStaged; return nil }); err != nil {
			return nil, staged, err
		}
	}

	// 5. Probe the verified binary before it replaces anything.
	step(StepProbe)
	failpoint("probe-before")
	if err := runProbe(ctx, staged, m.Probe); err != nil {
		return nil, staged, fmt.Errorf("%s %s: %w", m.App, m.Version, err)
	}
	if dry {
		os.Remove(staged)
		return &Result{App: m.App, Version: m.Version, Sequence: m.Sequence, Previous: r.Version, Path: app.Path}, "", nil
	}

	// 6. Swap. The anti-rollback floor file is raised first, so it is
	// never behind a release that reached the target (floor.go); the
	// pending record says what to lower it back to if the install is
	// undone before the rename.
	step(StepSwap)
	ff, err := a.fileFloor(app.Name)
	if err != nil {
		return nil, staged, err
	}
	if _, err := a.update(app.Name, func(r *record) error {
		r.Pending.RaisesFloor, r.Pending.FileFloor = true, ff
		return nil
	}); err != nil {
		return nil, staged, err
	}
	if err := a.raiseFloor(app.Name, m.Sequence, m.Version); err != nil {
		return nil, staged, err
	}
	failpoint("swap-after-floor")
	if _, err := a.update(app.Name, func(r *record) error { r.State = StateSwapping; return nil }); err != nil {
		return nil, staged, err
	}
	failpoint("swap-after-record")
	if err := swapIn(app, staged); err != nil {
		return nil, "", fmt.Errorf("swap %s into place: %w", app.Path, err)
	}
	failpoint("swap-before-record")

	// 7. Trial.
	rec, err := a.update(app.Name, func(r *record) error {
		a.markTrial(r, r.Pending)
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	a.opts.Logf("%s: installed %s, on trial (previous %s)", app.Name, m, rec.Previous)
	return &Result{App: m.App, Version: m.Version, Sequence: m.Sequence, Previous: rec.Previous, Path: app.Path}, "", nil
}

// markTrial records that p is at the target path and the old binary (if
// any) at .prev.
func (a *Agent) markTrial(r *record, p *pending) {
	now := a.opts.Now()
	if p.OldSHA256 != "" {
		r.Previous, r.PreviousSequence, r.PreviousSHA256 = r.Version, r.Sequence, p.OldSHA256
		if r.Previous == "" || r.SHA256 != p.OldSHA256 {
			// The old binary was not installed by edgefleet (or not the
			// one recorded): keep it, under an honest name.
			r.Previous, r.PreviousSequence = "unknown", 0
		}
	} else {
		r.Previous, r.PreviousSequence, r.PreviousSHA256 = "", 0, ""
	}
	r.Version, r.Sequence, r.SHA256 = p.Version, p.Sequence, p.SHA256
	r.Floor = max(r.Floor, p.Sequence)
	r.State = StateTrial
	r.Pending = nil
	r.LastError = ""
	r.BootsOnTrial = 0
	r.TrialStarted = now.UTC()
	r.event(now, "installed", p.Version, fmt.Sprintf("sequence %d, on trial", p.Sequence))
}

// checkSequence is anti-rollback: m must be above the installed sequence,
// the database's floor (the highest ever swapped in, kept after a
// rollback) and the floor file, which survives a reset of the database.
func (a *Agent) checkSequence(r *record, m *protocol.Manifest) error {
	ff, err := a.fileFloor(m.App)
	if err != nil {
		return err
	}
	if ff.Sequence > r.Floor && ff.Sequence > r.Sequence && m.Sequence <= ff.Sequence {
		what := fmt.Sprintf("sequence %d", ff.Sequence)
		if ff.Version != "" {
			what = fmt.Sprintf("%s %s (sequence %d)", m.App, ff.Version, ff.Sequence)
		}
		return fmt.Errorf("release %s %s has sequence %d, but this device already installed %s: the anti-rollback floor is %d, recorded in %s, which outlives a reset of the state database; anti-rollback refuses it (a replayed or stale release) — publish a release with a sequence above %d: %w",
			m.App, m.Version, m.Sequence, what, ff.Sequence, a.cfg.FloorPath(), ff.Sequence, ErrOldSequence)
	}
	if r.Floor > r.Sequence && m.Sequence <= r.Floor {
		return fmt.Errorf("release %s %s has sequence %d, but sequence %d was already installed on this device and rolled back (running %s, sequence %d); anti-rollback refuses it — publish a release with a sequence above %d: %w",
			m.App, m.Version, m.Sequence, r.Floor, r.Version, r.Sequence, r.Floor, ErrOldSequence)
	}
	if m.Sequence <= r.Sequence {
		return fmt.Errorf("release %s %s has sequence %d, not newer than the installed %s with sequence %d; anti-rollback refuses it (a replayed or stale release) — publish a release with a sequence above %d: %w",
			m.App, m.Version, m.Sequence, r.Version, r.Sequence, r.Sequence, ErrOldSequence)
	}
	return nil
}

// stage decodes the verified payload straight into path through one fixed
// buffer, fsyncs it, and on any failure (including a full disk) leaves the
// file for the caller to remove.
func (a *Agent) stage(ctx context.Context, app *AppConfig, m *protocol.Manifest, payload io.Reader, path string, progress func(Progress), dry bool) error {
	var exe io.Reader
	var err error
	if !m.IsDelta() {
		if exe, err = protocol.DecodePayload(payload, m); err != nil {
			return err
		}
	}
	var f *os.File
	if dry {
		// os.CreateTemp made it with O_EXCL just now.
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|syscall.O_NOFOLLOW, 0)
	} else {
		// Never O_TRUNC an existing name: a link planted there would make
		// root overwrite its target (safefile.go).
		f, err = createFile(path, 0o755)
	}
	if err != nil {
		return fmt.Errorf("create the staged file: %w", err)
	}
	defer f.Close()
	total := m.Executable.Size
	report := func(done int64) {
		p := Progress{App: app.Name, Step: StepStage, Done: done, Total: total}
		if dry {
			if progress != nil {
				progress(p)
			}
			return
		}
		a.setProgress(p, progress)
	}
	if m.IsDelta() {
		if err := a.stageDelta(ctx, app, m, payload, f, report, dry); err != nil {
			return err
		}
		return syncStaged(f, m, dry)
	}
	buf := make([]byte, stageBufSize)
	var done, lastReport int64
	report(0)
	half := false
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("staging cancelled: %w", err)
		}
		n, rerr := exe.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					return fmt.Errorf("disk full while staging %s %s into %s after %s of %s; the partial file was removed — free some space and try again: %w",
						m.App, m.Version, filepath.Dir(path), hardware.Size(done), hardware.Size(total), ErrNoSpace)
				}
				return fmt.Errorf("write the staged file: %w", err)
			}
			done += int64(n)
			if done-lastReport >= 256<<10 {
				report(done)
				lastReport = done
			}
			if !half && !dry && done >= total/2 {
				half = true
				failpoint("stage-mid")
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("staging %s %s: %w", m.App, m.Version, rerr)
		}
	}
	report(done)
	return syncStaged(f, m, dry)
}

// syncStaged fsyncs and closes the staged file.
func syncStaged(f *os.File, m *protocol.Manifest, dry bool) error {
	if !dry {
		failpoint("stage-before-sync")
	}
	if skipStagedSync { // only in the power-cut suite's broken build (powercut_nosync.go)
		return f.Close()
	}
	if err := f.Sync(); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("disk full while syncing the staged %s %s: %w", m.App, m.Version, ErrNoSpace)
		}
		return fmt.Errorf("fsync the staged file: %w", err)
	}
	return f.Close()
}

func checkELF(path string, t hardware.Target) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := hardware.InspectELF(f)
	if err != nil {
		return fmt.Errorf("the payload is not an executable this device can load: %w: %w", err, ErrIncompatible)
	}
	return info.Matches(t)
}

// runProbe runs the staged binary with the probe's arguments under its
// timeout and compares its trimmed output.
func runProbe(ctx context.Context, path string, p *protocol.Probe) error {
	if p == nil {
		return nil
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, time.Duration(p.Timeout))
	defer cancel()
	cmdline := strings.TrimSpace("new binary " + strings.Join(p.Args, " "))
	var stdout, stderr limitedBuffer
	var err error
	stayedUp := false
	for attempt := 0; ; attempt++ {
		stdout.Reset()
		stderr.Reset()
		cmd := exec.CommandContext(ctx, path, p.Args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.WaitDelay = time.Second
		cmd.Dir = filepath.Dir(path)
		cmd.Env = childEnv(nil) // not the agent's systemd variables (sdnotify.go)
		if p.StayUp > 0 {
			stayedUp, err = stayup.Run(cmd, time.Duration(p.StayUp))
		} else {
			err = cmd.Run()
		}
		// ETXTBSY: a concurrent fork briefly held a write descriptor of the
		// staged file; retry.
		if errors.Is(err, syscall.ETXTBSY) && attempt < 20 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		break
	}
	if perr := parent.Err(); perr != nil {
		// The agent is stopping: the probe was killed, which says nothing
		// about the binary. Not ErrProbe, so the release is not condemned.
		return fmt.Errorf("probe `%s` was interrupted because the install was cancelled; it runs again with the next attempt: %w", cmdline, perr)
	}
	tail := strings.TrimSpace(stderr.String())
	if tail != "" {
		tail = "; stderr: " + clip(tail, 300)
	}
	if ctx.Err() == context.DeadlineExceeded {
		// Transient (ErrProbeTimeout, not ErrProbe): a loaded device may be
		// slower than the packer's machine; the release is tried again.
		return fmt.Errorf("probe `%s` did not finish within %s (the device may be busy; trying again later)%s: %w", cmdline, time.Duration(p.Timeout), tail, ErrProbeTimeout)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				sig := ws.Signal()
				hint := ""
				if sig == syscall.SIGILL {
					hint = " (illegal instruction: this CPU cannot execute it)"
				}
				return fmt.Errorf("probe `%s` was killed by signal %s%s%s: %w", cmdline, probeSignalName(sig), hint, tail, ErrProbe)
			}
			return fmt.Errorf("probe `%s` exited with status %d%s: %w", cmdline, ee.ExitCode(), tail, ErrProbe)
		}
		return fmt.Errorf("probe `%s` could not start: %v: %w", cmdline, err, ErrProbe)
	}
	if p.StayUp > 0 && !stayedUp {
		return fmt.Errorf("probe `%s` exited with status 0 within %s; it must stay up that long%s: %w", cmdline, time.Duration(p.StayUp), tail, ErrProbe)
	}
	if err := p.CheckOutput(stdout.String()); err != nil {
		return fmt.Errorf("probe `%s` %v%s: %w", cmdline, err, tail, ErrProbe)
	}
	return nil
}

func probeSignalName(s syscall.Signal) string {
	names := map[syscall.Signal]string{
		syscall.SIGILL: "SIGILL", syscall.SIGSEGV: "SIGSEGV", syscall.SIGBUS: "SIGBUS", syscall.SIGABRT: "SIGABRT",
		syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM", syscall.SIGFPE: "SIGFPE", syscall.SIGTRAP: "SIGTRAP",
	}
	if n, ok := names[s]; ok {
		return n
	}
	return s.String()
}

// limitedBuffer keeps the first 64 KiB written to it and drops the rest.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// fileSHA256 hashes a file; "" when it does not exist.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 32<<10)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
