package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// RecoverAction is one thing Recover did.
type RecoverAction struct {
	App string `json:"app"`
	// Action: "undone" (an interrupted install was undone, the old binary
	// stays), "finished" (an interrupted swap or rollback was completed),
	// "boot-on-trial" (counted a boot of an app still on trial),
	// "rolled-back" (too many boots on trial), "cleaned" (leftover files
	// removed), "failed" (the files match nothing recorded).
	Action string `json:"action"`
	Detail string `json:"detail"`
}

// Recover runs at daemon start. For every configured app it finishes or
// undoes whatever an earlier run left half done, judging by the recorded
// step and the sha256 of the files actually on disk; counts a boot for an
// app still on trial and rolls it back once it exceeds
// health.max_boots_on_trial. It is idempotent: a crash inside Recover is
// recovered by the next Recover.
func (a *Agent) Recover(ctx context.Context) ([]RecoverAction, error) {
	var acts []RecoverAction
	var errs []error
	for i := range a.cfg.Apps {
		c := &a.cfg.Apps[i]
		if err := ctx.Err(); err != nil {
			return acts, err
		}
		unlock, err := a.lock(c.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r, err := a.load(c.Name)
		if err == nil {
			var act []RecoverAction
			act, err = a.recoverApp(ctx, c, r, true)
			acts = append(acts, act...)
		}
		unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", c.Name, err))
		}
	}
	for _, act := range acts {
		a.opts.Logf("recover %s: %s: %s", act.App, act.Action, act.Detail)
	}
	return acts, errors.Join(errs...)
}

// recoverApp settles one app; boot says whether this is a daemon start
// (count boots on trial). The caller holds the app's lock.
func (a *Agent) recoverApp(ctx context.Context, c *AppConfig, r *record, boot bool) ([]RecoverAction, error) {
	var acts []RecoverAction
	act := func(action, format string, args ...any) {
		acts = append(acts, RecoverAction{App: c.Name, Action: action, Detail: fmt.Sprintf(format, args...)})
	}
	now := a.opts.Now()
	settled := settledState(r.State)
	if settled {
		// A lost write can leave the record ahead of (or beside) the files:
		// check the app path before anything trusts the record.
		a2, err := a.checkTarget(c, r)
		acts = append(acts, a2...)
		if err != nil {
			return acts, err
		}
		if r, err = a.load(c.Name); err != nil {
			return acts, err
		}
	}
	switch r.State {
	case StateStaging, StateStaged:
		p := r.Pending
		if err := removeIfExists(c.stagedPath()); err != nil {
			return acts, err
		}
		if err := a.unraiseFloor(c.Name, p); err != nil {
			return acts, err
		}
		detail := fmt.Sprintf("the install of %s was interrupted while %s; the staged file was removed and %s stays", pendingVersion(p), r.State, versionOr(r.Version))
		if _, err := a.update(c.Name, func(r *record) error {
			r.State = priorState(r.Pending)
			r.Pending = nil
			r.LastError = detail + "; install it again"
			r.event(now, "recovered", pendingVersion(p), detail)
			return nil
		}); err != nil {
			return acts, err
		}
		act("undone", "%s", detail)

	case StateSwapping:
		a2, err := a.settleSwap(c, r)
		acts = append(acts, a2...)
		if err != nil {
			return acts, err
		}

	case StateRollingBack:
		p := r.Pending
		if p == nil {
			return acts, a.markFailed(c, "rolling back without a recorded target")
		}
		tgt, err := fileSHA256(c.Path)
		if err != nil {
			return acts, err
		}
		if tgt != p.SHA256 {
			prev, err := fileSHA256(c.PrevPath())
			if err != nil {
				return acts, err
			}
			if prev != p.SHA256 {
				return acts, a.markFailed(c, fmt.Sprintf("an interrupted rollback to %s cannot finish: neither %s nor %s holds it", p.Version, c.Path, c.PrevPath()))
			}
			if err := restoreFromPrev(c); err != nil {
				return acts, err
			}
		}
		reason := r.LastError
		if reason == "" {
			reason = "rollback interrupted and finished at start"
		}
		if _, err := a.update(c.Name, func(r *record) error { a.markRolledBack(r, reason); return nil }); err != nil {
			return acts, err
		}
		removeIfExists(c.restorePath())
		act("finished", "rollback to %s finished", p.Version)

	case StateTrial:
		if !boot {
			break
		}
		rec, err := a.update(c.Name, func(r *record) error {
			r.BootsOnTrial++
			r.event(now, "boot-on-trial", r.Version, fmt.Sprintf("boot %d on trial (at most %d)", r.BootsOnTrial, c.Health.MaxBootsOnTrial))
			return nil
		})
		if err != nil {
			return acts, err
		}
		act("boot-on-trial", "%s on trial, boot %d of at most %d", rec.Version, rec.BootsOnTrial, c.Health.MaxBootsOnTrial)
		if rec.BootsOnTrial > c.Health.MaxBootsOnTrial {
			reason := fmt.Sprintf("%s did not commit within %d boots on trial", rec.Version, c.Health.MaxBootsOnTrial)
			if err := a.rollback(c, rec, reason); err != nil {
				if errors.Is(err, ErrNoPrevious) {
					// Nothing to go back to: keep running it, but say so.
					a.update(c.Name, func(r *record) error { r.LastError = reason + "; " + err.Error(); return nil })
					act("failed", "%s; %v", reason, err)
					break
				}
				return acts, err
			}
			act("rolled-back", "%s", reason)
		}
	}
	if !settled {
		// An install or rollback was just undone or finished: the state it
		// returned to is checked against the files as well.
		if rr, err := a.load(c.Name); err == nil && settledState(rr.State) {
			a2, err := a.checkTarget(c, rr)
			acts = append(acts, a2...)
			if err != nil {
				return acts, err
			}
		}
	}
	// Leftovers from a crash between a rename and the record, or from a
	// killed Check (only at boot: a Check may be running otherwise).
	leftovers := []string{c.stagedPath(), c.restorePath()}
	if boot {
		checks, _ := filepath.Glob(filepath.Join(filepath.Dir(c.Path), "."+filepath.Base(c.Path)+".check-*"))
		leftovers = append(leftovers, checks...)
	}
	for _, p := range leftovers {
		if _, err := os.Lstat(p); err == nil {
			if rr, _ := a.load(c.Name); rr != nil && (rr.State == StateStaging || rr.State == StateStaged || rr.State == StateSwapping) {
				continue
			}
			if err := os.Remove(p); err == nil {
				act("cleaned", "removed leftover %s", p)
			}
		}
	}
	return acts, nil
}

// settleSwap decides an interrupted swap from the files on disk: if the
// target already holds the new binary, finish; if the staged file is intact,
// run the (idempotent) swap again; if the target is gone, restore .prev;
// else undo.
func (a *Agent) settleSwap(c *AppConfig, r *record) ([]RecoverAction, error) {
	p := r.Pending
	if p == nil {
		return nil, a.markFailed(c, "swapping without a recorded release")
	}
	var acts []RecoverAction
	tgt, err := fileSHA256(c.Path)
	if err != nil {
		return nil, err
	}
	staged, err := fileSHA256(c.stagedPath())
	if err != nil {
		return nil, err
	}
	if tgt == p.SHA256 || (staged == p.SHA256 && (tgt == p.OldSHA256 || tgt == "")) {
		// The swap is finished below: the floor file first, as in the
		// pipeline, so it is never behind a trial the database records.
		if err := a.raiseFloor(c.Name, p.Sequence, p.Version); err != nil {
			return nil, err
		}
	}
	switch {
	case tgt == p.SHA256:
		// The rename happened; make sure it is durable.
		if err := syncDir(c); err != nil {
			return nil, err
		}
		removeIfExists(c.stagedPath())
		acts = append(acts, RecoverAction{App: c.Name, Action: "finished", Detail: fmt.Sprintf("swap to %s had completed; on trial", p.Version)})
	case staged == p.SHA256 && (tgt == p.OldSHA256 || tgt == ""):
		if err := swapIn(c, c.stagedPath()); err != nil {
			return nil, err
		}
		acts = append(acts, RecoverAction{App: c.Name, Action: "finished", Detail: fmt.Sprintf("swap to %s finished; on trial", p.Version)})
	case tgt == "" && p.OldSHA256 != "":
		prev, err := fileSHA256(c.PrevPath())
		if err != nil {
			return nil, err
		}
		if prev != p.OldSHA256 {
			return nil, a.markFailed(c, fmt.Sprintf("%s is missing and neither the staged file nor %s holds a known binary", c.Path, c.PrevPath()))
		}
		if err := restoreFromPrev(c); err != nil {
			return nil, err
		}
		return a.undo(c, "the swap was interrupted and the old binary restored from "+c.PrevPath(), acts)
	case tgt == p.OldSHA256:
		removeIfExists(c.stagedPath())
		return a.undo(c, "the swap was interrupted before it changed anything", acts)
	case p.OldSHA256 != "":
		// The target holds neither binary (a write lost in a power cut, a
		// disk that lies): .prev still holding the old one is enough.
		prev, err := fileSHA256(c.PrevPath())
		if err != nil {
			return nil, err
		}
		if prev != p.OldSHA256 {
			return nil, a.markFailed(c, fmt.Sprintf("after an interrupted swap %s holds an unknown binary (sha256 %s) and %s does not hold the old one", c.Path, tgt, c.PrevPath()))
		}
		if err := restoreFromPrev(c); err != nil {
			return nil, err
		}
		removeIfExists(c.restorePath())
		removeIfExists(c.stagedPath())
		return a.undo(c, fmt.Sprintf("the swap was interrupted and %s held an unknown binary (sha256 %s: changed by hand, or a write lost in a power cut); the old binary was restored from %s", c.Path, shortSum(tgt), c.PrevPath()), acts)
	default:
		return nil, a.markFailed(c, fmt.Sprintf("after an interrupted swap %s holds an unknown binary (sha256 %s)", c.Path, tgt))
	}
	if _, err := a.update(c.Name, func(r *record) error {
		a.markTrial(r, r.Pending)
		r.event(a.opts.Now(), "recovered", p.Version, "interrupted swap finished")
		return nil
	}); err != nil {
		return acts, err
	}
	return acts, nil
}

// settledState: the record says which binary is at the app path.
func settledState(s string) bool {
	return s == StateCommitted || s == StateTrial || s == StateRolledBack
}

// checkTarget makes the app path agree with a settled record. Only a write
// lost in a power cut (a missing fsync, a disk that acknowledges writes it
// has not made) can part them, so the record's own files decide, in this
// order: the recorded binary is at the path (nothing to do); the staged
// file holds it (the rename was lost: move it into place again); .prev
// holds it (restore it); the path or .prev holds the recorded previous
// binary (the device runs that: record a rollback to it, so the next
// release installs). Anything else is marked failed. The caller holds the
// app's lock.
func (a *Agent) checkTarget(c *AppConfig, r *record) ([]RecoverAction, error) {
	if r.SHA256 == "" || !settledState(r.State) {
		return nil, nil
	}
	tgt, err := fileSHA256(c.Path)
	if err != nil {
		return nil, err
	}
	if tgt == r.SHA256 {
		return nil, nil
	}
	staged, err := fileSHA256(c.stagedPath())
	if err != nil {
		return nil, err
	}
	prev, err := fileSHA256(c.PrevPath())
	if err != nil {
		return nil, err
	}
	found := "no file"
	if tgt != "" {
		found = "sha256 " + shortSum(tgt)
		if tgt == r.PreviousSHA256 {
			found = "the previous release " + r.Previous
		}
	}
	what := fmt.Sprintf("%s held %s instead of the recorded %s %s (changed by hand, or a write lost in a power cut)", c.Path, found, r.State, r.Version)
	act := func(action, detail string) []RecoverAction {
		return []RecoverAction{{App: c.Name, Action: action, Detail: detail}}
	}
	switch {
	case staged == r.SHA256:
		if tgt == "" || tgt == r.PreviousSHA256 {
			// swapIn keeps the target as .prev: the recorded previous.
			if err := swapIn(c, c.stagedPath()); err != nil {
				return nil, err
			}
		} else {
			// An unknown target must not replace .prev.
			if err := os.Rename(c.stagedPath(), c.Path); err != nil {
				return nil, fmt.Errorf("move the staged %s %s over %s: %w", c.Name, r.Version, c.Path, err)
			}
			if err := syncDir(c); err != nil {
				return nil, err
			}
		}
		a.update(c.Name, func(r *record) error {
			r.event(a.opts.Now(), "recovered", r.Version, what+"; the staged copy was moved into place again")
			return nil
		})
		return act("finished", what+"; the staged copy was moved into place again"), nil
	case prev == r.SHA256:
		if err := restoreFromPrev(c); err != nil {
			return nil, err
		}
		removeIfExists(c.restorePath())
		a.update(c.Name, func(r *record) error {
			r.event(a.opts.Now(), "recovered", r.Version, what+"; restored from "+c.PrevPath())
			return nil
		})
		return act("finished", what+"; restored from "+c.PrevPath()), nil
	case r.PreviousSHA256 != "" && (tgt == r.PreviousSHA256 || prev == r.PreviousSHA256):
		if tgt != r.PreviousSHA256 {
			if err := restoreFromPrev(c); err != nil {
				return nil, err
			}
			removeIfExists(c.restorePath())
		}
		from := r.Version
		reason := fmt.Sprintf("%s; the device runs the previous release %s again — install a newer release", what, r.Previous)
		if _, err := a.update(c.Name, func(r *record) error {
			r.Version, r.Sequence, r.SHA256 = r.Previous, r.PreviousSequence, r.PreviousSHA256
			r.Previous, r.PreviousSequence, r.PreviousSHA256 = "", 0, ""
			r.State = StateRolledBack
			r.BootsOnTrial = 0
			r.TrialStarted = time.Time{}
			r.LastError = reason
			r.event(a.opts.Now(), "rolled-back", r.Version, "from "+from+": "+reason)
			return nil
		}); err != nil {
			return nil, err
		}
		return act("rolled-back", reason), nil
	}
	return nil, a.markFailed(c, what+", and neither the staged file nor "+c.PrevPath()+" holds a recorded binary")
}

// shortSum is the first 12 hex digits of a sha256, for messages.
func shortSum(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func (a *Agent) undo(c *AppConfig, detail string, acts []RecoverAction) ([]RecoverAction, error) {
	now := a.opts.Now()
	// The release never reached the target: lower the floor file back, or
	// a power cut during a swap would condemn the release for good.
	r, err := a.load(c.Name)
	if err != nil {
		return acts, err
	}
	if err := a.unraiseFloor(c.Name, r.Pending); err != nil {
		return acts, err
	}
	var v string
	if _, err := a.update(c.Name, func(r *record) error {
		v = pendingVersion(r.Pending)
		r.State = priorState(r.Pending)
		r.Pending = nil
		r.LastError = fmt.Sprintf("install of %s undone: %s; install it again", v, detail)
		r.event(now, "recovered", v, detail)
		return nil
	}); err != nil {
		return acts, err
	}
	return append(acts, RecoverAction{App: c.Name, Action: "undone", Detail: fmt.Sprintf("install of %s undone: %s", v, detail)}), nil
}

func (a *Agent) markFailed(c *AppConfig, why string) error {
	now := a.opts.Now()
	_, err := a.update(c.Name, func(r *record) error {
		r.State = StateFailed
		r.Pending = nil
		r.LastError = why + "; reinstall a release or restore the binary by hand"
		r.event(now, "failed", r.Version, why)
		return nil
	})
	if err != nil {
		return err
	}
	return fmt.Errorf("%s: %s", c.Name, why)
}

func syncDir(c *AppConfig) error {
	d, err := os.Open(dirOf(c.Path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func priorState(p *pending) string {
	if p == nil || p.PriorState == "" {
		return StateNone
	}
	return p.PriorState
}

func pendingVersion(p *pending) string {
	if p == nil {
		return "a release"
	}
	return p.Version
}

func versionOr(v string) string {
	if v == "" {
		return "the current binary"
	}
	return v
}
