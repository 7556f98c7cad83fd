package agent

// Applying a delta release (SPEC.md §8.10) into the staging file: the
// verified patch is spooled to an unlinked file beside the staging file,
// the installed executable is read at the offsets the patch names, and
// the result is written sequentially and checked against the signed size
// and sha256 (protocol/bsdiff). Memory: fixed buffers plus the bzip2
// decoders the signed max_bzip2_level allows. A failure wraps ErrDelta:
// the caller falls back to the full release.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	"github.com/edgefleet/edgefleet/protocol/bsdiff"
	"golang.org/x/sys/unix"
)

// ErrDelta: a delta release could not be used on this device (its base is
// not the installed executable, the patch was refused, the result did not
// match). Not a verdict on the release: the full release is the fallback
// (SPEC.md §8.10).
var ErrDelta = errors.New("the delta could not be applied; the full release is needed")

// DeltaFailpoint fires when a delta's result is half written into the
// staging file (see FailpointEnv). It is not in Failpoints, whose
// points every full install passes.
const DeltaFailpoint = "delta-mid"

// bzip2LevelBytes is what one bzip2 decoder allocates per block-size level.
const bzip2LevelBytes = 400_000

// deltaLevelLimit is the highest bzip2 level whose three decoders fit the
// device's decoder memory limit (the same limit as for xz).
func (a *Agent) deltaLevelLimit() int {
	return int(min(9, a.decoderLimit/(3*bzip2LevelBytes)))
}

// checkDeltaMemory refuses a delta whose decoders need more than the limit.
func (a *Agent) checkDeltaMemory(m *protocol.Manifest) error {
	if !m.IsDelta() || m.Delta.MaxBzip2Level <= a.deltaLevelLimit() {
		return nil
	}
	return fmt.Errorf("the delta to %s %s needs bzip2 level-%d decoders (%s), above this device's decoder memory (%s, %s): %w",
		m.App, m.Version, m.Delta.MaxBzip2Level, hardware.Size(int64(3*bzip2LevelBytes*m.Delta.MaxBzip2Level)), hardware.Size(a.decoderLimit), a.decoderWhy, ErrDelta)
}

// progressWriter reports bytes written and fires the stage-mid failpoint.
type progressWriter struct {
	w           io.Writer
	done, total int64
	last        int64
	report      func(int64)
	half        bool
	crash       bool
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.done += int64(n)
	if p.done-p.last >= 256<<10 {
		p.report(p.done)
		p.last = p.done
	}
	if p.crash && !p.half && p.done >= p.total/2 {
		p.half = true
		failpoint(DeltaFailpoint)
	}
	return n, err
}

// stageDelta applies the delta m (payload: the verified patch stream) to
// app's installed executable, writing the result into f.
func (a *Agent) stageDelta(ctx context.Context, app *AppConfig, m *protocol.Manifest, payload io.Reader, f *os.File, report func(int64), dry bool) error {
	wrap := func(err error) error {
		if errors.Is(err, ErrDelta) || errors.Is(err, context.Canceled) {
			return err
		}
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("disk full while applying the delta to %s %s: %w", m.App, m.Version, ErrNoSpace)
		}
		return fmt.Errorf("%w: %w", ErrDelta, err)
	}
	if err := a.checkDeltaMemory(m); err != nil {
		return err
	}
	base, err := os.Open(app.Path)
	if err != nil {
		return wrap(fmt.Errorf("the delta to %s %s applies to the installed executable, which cannot be read: %w", m.App, m.Version, err))
	}
	defer base.Close()
	bi, err := base.Stat()
	if err != nil {
		return wrap(err)
	}
	// The patch: every chunk already verified against the signed hashes;
	// spooled to an unlinked file so the applier can read its three
	// streams at their offsets, and a crash leaves nothing behind.
	spool, err := openSpool(filepath.Dir(f.Name()))
	if err != nil {
		return fmt.Errorf("create the delta spool: %w", err)
	}
	defer spool.Close()
	n, err := io.CopyBuffer(spool, io.LimitReader(payload, m.Payload.Size+1), make([]byte, 32<<10))
	if err != nil {
		return wrap(fmt.Errorf("read the delta patch: %w", err))
	}
	if n != m.Payload.Size {
		return wrap(fmt.Errorf("the delta patch is %d bytes, the signed size is %d: %w", n, m.Payload.Size, protocol.ErrPayloadMismatch))
	}
	pw := &progressWriter{w: f, total: m.Executable.Size, report: report, crash: !dry}
	report(0)
	if _, err := bsdiff.ApplyDelta(ctx, m, base, bi.Size(), spool, n, pw, a.deltaLevelLimit()); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("staging cancelled: %w", err)
		}
		return wrap(err)
	}
	report(pw.done)
	return nil
}

// deltaFailed undoes the pending install of a delta that could not be
// applied, like refused, but records no refusal of the release: the full
// release is still to come (history event "delta-failed").
func (a *Agent) deltaFailed(app *AppConfig, m *protocol.Manifest, cause error) {
	now := a.opts.Now()
	if r, err := a.load(app.Name); err == nil && r.Pending != nil && r.Pending.Sequence == m.Sequence && (r.State == StateStaging || r.State == StateStaged) {
		if err := a.unraiseFloor(app.Name, r.Pending); err != nil {
			a.opts.Logf("lower the anti-rollback floor after the failed delta of %s: %v", m, err)
		}
	}
	if _, err := a.update(app.Name, func(r *record) error {
		if r.Pending != nil && r.Pending.Sequence == m.Sequence && (r.State == StateStaging || r.State == StateStaged) {
			r.State = r.Pending.PriorState
			r.Pending = nil
		}
		r.event(now, "delta-failed", m.Version, cause.Error())
		return nil
	}); err != nil {
		a.opts.Logf("record the failed delta of %s: %v", m, err)
	}
}

// openSpool opens an anonymous file in dir: O_TMPFILE where the kernel and
// filesystem have it (nothing ever has a name, so a crash leaves nothing),
// else a named temporary file removed at once.
func openSpool(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(delta spool)")), nil
	}
	f, err := os.CreateTemp(dir, ".delta-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}
