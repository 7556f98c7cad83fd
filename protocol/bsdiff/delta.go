package bsdiff

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/edgefleet/edgefleet/protocol"
)

// ErrBaseMismatch: the base executable is not the one the delta was made
// from (a device whose binary was modified, or a delta for another
// version). The fix is the full release, never a retry of the delta.
var ErrBaseMismatch = errors.New("the delta's base is not this executable")

// ApplyDelta applies the verified delta manifest m's patch (patchSize
// bytes; chunks already checked against m.Payload) to base, writing the
// result to out. It checks, in order: that m is a delta; that base has the
// signed base size and sha256 (ErrBaseMismatch, before any output); the
// patch against every limit (Apply); that the patch held exactly the
// signed number of control entries; and that the result has the signed
// executable size and sha256 (protocol.ErrPayloadMismatch). On any error
// out holds garbage the caller must discard. maxLevel caps the bzip2
// level the device accepts (0: 9).
func ApplyDelta(ctx context.Context, m *protocol.Manifest, base io.ReaderAt, baseSize int64, patch io.ReaderAt, patchSize int64, out io.Writer, maxLevel int) (Result, error) {
	if !m.IsDelta() {
		return Result{}, fmt.Errorf("%s is not a delta: %w", m, protocol.ErrMalformed)
	}
	d := m.Delta
	if baseSize != d.BaseSize {
		return Result{}, fmt.Errorf("the delta to %s %s applies to a %d-byte executable (%s, version %s); the installed one is %d bytes (modified, or another build): %w",
			m.App, m.Version, d.BaseSize, d.BaseSHA256[:12], orUnknown(d.BaseVersion), baseSize, ErrBaseMismatch)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(base, 0, baseSize)); err != nil {
		return Result{}, fmt.Errorf("hash the base executable: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.BaseSHA256 {
		return Result{}, fmt.Errorf("the delta to %s %s applies to the executable %s (version %s); the installed one is %s (modified, or another build): %w",
			m.App, m.Version, d.BaseSHA256[:12], orUnknown(d.BaseVersion), got[:12], ErrBaseMismatch)
	}
	if patchSize != m.Payload.Size {
		return Result{}, fmt.Errorf("delta patch is %d bytes, the signed size is %d: %w", patchSize, m.Payload.Size, protocol.ErrPayloadMismatch)
	}
	level := d.MaxBzip2Level
	if maxLevel > 0 && maxLevel < level {
		return Result{}, fmt.Errorf("the delta's bzip2 streams need level %d decoders (%d KB each); this device allows level %d: %w", level, level*400, maxLevel, protocol.ErrTooLarge)
	}
	res, err := Apply(ctx, base, baseSize, patch, patchSize, out, m.Executable.Size, Options{MaxControlEntries: d.ControlEntries + 1, MaxBzip2Level: level})
	if err != nil {
		return res, err
	}
	if res.ControlEntries != d.ControlEntries {
		return res, fmt.Errorf("bsdiff: the patch holds %d control entries, the signed count is %d: %w", res.ControlEntries, d.ControlEntries, protocol.ErrMalformed)
	}
	if got := hex.EncodeToString(res.SHA256[:]); res.Size != m.Executable.Size || got != m.Executable.SHA256 {
		return res, fmt.Errorf("the delta gave %d bytes with sha256 %s; the signed %s is %d bytes, %s: %w",
			res.Size, got[:12], m, m.Executable.Size, m.Executable.SHA256[:12], protocol.ErrPayloadMismatch)
	}
	return res, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
