package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// swapIn replaces app.Path with the staged (fsynced, verified, probed)
// file, crash-safely (DESIGN.md decision 6):
//
//  1. remove the old <name>.prev — only while the target exists, so some
//     complete copy of the current binary always exists;
//  2. hard-link the target to <name>.prev (the old binary stays alive) and
//     fsync the directory, so the link is durable before the rename: a
//     journal may otherwise keep the rename and lose the link, and with it
//     the only copy of the old binary;
//  3. rename(staged, target): atomic, the path never lacks a file;
//  4. fsync the directory, so the rename survives power loss.
//
// Each step is idempotent, so Recover can simply run swapIn again.
func swapIn(app *AppConfig, staged string) error {
	dir := filepath.Dir(app.Path)
	prev := app.PrevPath()
	_, err := os.Lstat(app.Path)
	targetExists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if targetExists {
		if err := os.Remove(prev); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the old %s: %w", prev, err)
		}
		failpoint("swap-after-remove-prev")
		if err := os.Link(app.Path, prev); err != nil {
			return fmt.Errorf("keep the current binary as %s: %w", prev, err)
		}
		if err := syncSwapDir(dir); err != nil {
			return err
		}
		failpoint("swap-after-link-prev")
	}
	if err := os.Rename(staged, app.Path); err != nil {
		return fmt.Errorf("rename the staged binary over %s: %w", app.Path, err)
	}
	failpoint("swap-after-rename")
	return syncSwapDir(dir)
}

// syncSwapDir fsyncs the app's directory during the swap (skipped only in
// the power-cut suite's broken build, powercut_nodirsync.go).
func syncSwapDir(dir string) error {
	if skipSwapDirSync {
		return nil
	}
	return protocol.SyncDir(dir)
}

// restoreFromPrev puts <name>.prev back at the target: hard-link it to a
// temporary name, rename that over the target (atomic), fsync the
// directory. .prev stays (same inode as the target now).
func restoreFromPrev(app *AppConfig) error {
	tmp := app.restorePath()
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Link(app.PrevPath(), tmp); err != nil {
		return fmt.Errorf("link %s: %w", app.PrevPath(), err)
	}
	failpoint("rollback-after-link")
	if err := os.Rename(tmp, app.Path); err != nil {
		return fmt.Errorf("rename the previous binary over %s: %w", app.Path, err)
	}
	failpoint("rollback-after-rename")
	return protocol.SyncDir(filepath.Dir(app.Path))
}

// Commit ends the trial: the new binary stays, .prev is kept for a manual
// rollback.
func (a *Agent) Commit(app string) error {
	if _, ok := a.cfg.App(app); !ok {
		return fmt.Errorf("commit %q: %w", app, ErrUnknownApp)
	}
	failpoint("commit-before-record")
	now := a.opts.Now()
	_, err := a.update(app, func(r *record) error {
		if r.State != StateTrial {
			return fmt.Errorf("%s is %s, not on trial; nothing to commit", app, r.State)
		}
		r.State = StateCommitted
		r.BootsOnTrial = 0
		r.LastError = ""
		r.event(now, "committed", r.Version, "")
		return nil
	})
	if err == nil {
		a.opts.Logf("%s: committed", app)
	}
	return err
}

// Rollback restores <path>.prev over <path> crash-safely and records the
// reason; the app is then "rolled-back" to the previous version. The
// anti-rollback floor keeps the rolled-back release's sequence, so the same
// release is not installed again.
func (a *Agent) Rollback(app, reason string) error {
	return a.rollbackApp(app, reason, false)
}

// RollbackByHand is Rollback asked for by a person (edgefleet-agent
// rollback, the control socket): when there is no previous binary it
// refuses and changes nothing — a first install on trial stays on trial.
func (a *Agent) RollbackByHand(app, reason string) error {
	return a.rollbackApp(app, reason, true)
}

// CanRollback says, without changing anything, whether RollbackByHand
// would refuse for lack of a previous binary (nil: it may proceed).
func (a *Agent) CanRollback(app string) error {
	c, r, unlock, err := a.lockedForRollback(app)
	if err != nil {
		return err
	}
	defer unlock()
	return noPreviousByHand(c, r)
}

// lockedForRollback finds app's config, takes its lock and loads its
// record; the caller unlocks when err is nil.
func (a *Agent) lockedForRollback(app string) (*AppConfig, *record, func(), error) {
	c, ok := a.cfg.App(app)
	if !ok {
		return nil, nil, nil, fmt.Errorf("roll back %q: %w", app, ErrUnknownApp)
	}
	unlock, err := a.lock(app)
	if err != nil {
		return nil, nil, nil, err
	}
	r, err := a.load(app)
	if err != nil {
		unlock()
		return nil, nil, nil, err
	}
	return c, r, unlock, nil
}

// noPreviousByHand is the refusal of a rollback by hand with nothing to go
// back to; nil when there may be (in-flight states are recovered first).
func noPreviousByHand(c *AppConfig, r *record) error {
	switch r.State {
	case StateStaging, StateStaged, StateSwapping, StateRollingBack:
		return nil
	}
	if r.PreviousSHA256 != "" {
		return nil
	}
	if r.Version == "" {
		return fmt.Errorf("%s has nothing installed, so there is nothing to roll back; nothing was changed: %w", c.Name, ErrNoPrevious)
	}
	next := "install a fixed release with a higher sequence (sideload it, or publish it)"
	if r.State == StateTrial {
		next = "its trial goes on (the daemon marks it failed if it fails); to replace it, " + next
	}
	return fmt.Errorf("%s %s is the first version installed here, so there is no previous binary to go back to; nothing was changed: %s: %w", c.Name, r.Version, next, ErrNoPrevious)
}

func (a *Agent) rollbackApp(app, reason string, byHand bool) error {
	c, r, unlock, err := a.lockedForRollback(app)
	if err != nil {
		return err
	}
	defer unlock()
	if byHand {
		if err := noPreviousByHand(c, r); err != nil {
			return err
		}
	}
	switch r.State {
	case StateStaging, StateStaged, StateSwapping, StateRollingBack:
		if _, err := a.recoverApp(context.Background(), c, r, false); err != nil {
			return err
		}
		if r, err = a.load(app); err != nil {
			return err
		}
		if byHand {
			if err := noPreviousByHand(c, r); err != nil {
				return err
			}
		}
	}
	return a.rollback(c, r, reason)
}

// rollback does the work; the caller holds the app's lock.
func (a *Agent) rollback(c *AppConfig, r *record, reason string) error {
	if r.PreviousSHA256 == "" {
		err := fmt.Errorf("%s %s has no previous binary recorded: %w", c.Name, r.Version, ErrNoPrevious)
		if r.State == StateTrial {
			// A first install failed its trial. Leaving it on trial would
			// refuse every later release (ErrBusy); mark it failed so a
			// fixed release can install. The binary stays: it is all
			// there is.
			a.markFailed(c, reason+"; it was the first install, so there is no previous version to go back to and it keeps running")
		}
		return err
	}
	// The rollback links and renames in the app's directory: only in one
	// that no other user can change (safefile.go).
	if err := checkAppDir(c); err != nil {
		return err
	}
	sum, err := fileSHA256(c.PrevPath())
	if err != nil {
		return err
	}
	if sum != r.PreviousSHA256 {
		if sum == "" {
			return fmt.Errorf("%s is missing, so %s cannot go back to %s: %w", c.PrevPath(), c.Name, r.Previous, ErrNoPrevious)
		}
		return fmt.Errorf("%s does not hold the recorded previous version %s (sha256 %s, recorded %s); refusing to restore an unknown binary: %w",
			c.PrevPath(), r.Previous, sum, r.PreviousSHA256, ErrNoPrevious)
	}
	if _, err := a.update(c.Name, func(r *record) error {
		r.Pending = &pending{Version: r.Previous, Sequence: r.PreviousSequence, SHA256: r.PreviousSHA256, OldSHA256: r.SHA256, PriorState: r.State, Started: a.opts.Now().UTC()}
		r.State = StateRollingBack
		r.LastError = reason
		return nil
	}); err != nil {
		return err
	}
	failpoint("rollback-after-record")
	if err := restoreFromPrev(c); err != nil {
		return fmt.Errorf("roll %s back: %w", c.Name, err)
	}
	failpoint("rollback-before-record")
	if _, err := a.update(c.Name, func(r *record) error {
		a.markRolledBack(r, reason)
		return nil
	}); err != nil {
		return err
	}
	os.Remove(c.restorePath())
	a.opts.Logf("%s: rolled back: %s", c.Name, reason)
	return nil
}

func (a *Agent) markRolledBack(r *record, reason string) {
	p := r.Pending
	from := r.Version
	r.Version, r.Sequence, r.SHA256 = p.Version, p.Sequence, p.SHA256
	r.Previous, r.PreviousSequence, r.PreviousSHA256 = "", 0, ""
	r.State = StateRolledBack
	r.Pending = nil
	r.BootsOnTrial = 0
	r.TrialStarted = time.Time{}
	r.LastError = reason
	r.event(a.opts.Now(), "rolled-back", p.Version, fmt.Sprintf("from %s: %s", from, reason))
}
