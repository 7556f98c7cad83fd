package packer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"aead.dev/minisign"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
)

// DeltaResult is one delta the packer made, or why it did not.
type DeltaResult struct {
	// From is the earlier bundle the delta starts from.
	From        string `json:"from"`
	BaseVersion string `json:"base_version"`
	// Bundle is the written delta bundle; empty when skipped.
	Bundle string `json:"bundle,omitempty"`
	// PatchSize is the patch (the delta's payload): the bytes on the wire.
	PatchSize int64 `json:"patch_size,omitempty"`
	// Skipped says why no delta was written.
	Skipped string `json:"skipped,omitempty"`
}

// deltaBase is one full bundle found in Options.DeltaFrom.
type deltaBase struct {
	path string
	m    *protocol.Manifest
}

// DeltaBundleName is the file name of a delta bundle:
// <app>_<version>_<profile>.from-<base version>.efb.
func DeltaBundleName(app, version, profile, baseVersion string) string {
	return app + "_" + version + "_" + profile + ".from-" + baseVersion + protocol.BundleExt
}

// UPXDeltaSkip is what a UPX profile says instead of a delta.
const UPXDeltaSkip = "UPX-packed payloads do not diff"

// loadBases lists the full bundles of Options.DeltaFrom, verified with the
// signing key's public key (a delta binds the base's signed hash).
func (p *pack) loadBases() ([]deltaBase, error) {
	p.basesOnce.Do(func() {
		pub, ok := p.o.Key.Public().(minisign.PublicKey)
		if !ok {
			p.basesErr = fmt.Errorf("the signing key has no public key")
			return
		}
		kr := protocol.NewKeyring(pub)
		var paths []string
		for _, d := range p.o.DeltaFrom {
			st, err := os.Stat(d)
			if err != nil {
				p.basesErr = err
				return
			}
			if !st.IsDir() {
				paths = append(paths, d)
				continue
			}
			found, _ := filepath.Glob(filepath.Join(d, "*"+protocol.BundleExt))
			paths = append(paths, found...)
		}
		sort.Strings(paths)
		for _, path := range paths {
			m, err := protocol.ReadManifest(path, kr)
			if err != nil || m.IsDelta() {
				continue // another key, not a bundle, or a delta: not a base
			}
			p.bases = append(p.bases, deltaBase{path: path, m: m})
		}
	})
	return p.bases, p.basesErr
}

// readBaseExecutable decodes a base bundle's executable (verified against
// its signed hashes).
func readBaseExecutable(path string, kr *protocol.Keyring) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, kr)
	if err != nil {
		return nil, err
	}
	exe, err := b.Executable()
	if err != nil {
		return nil, err
	}
	return io.ReadAll(exe)
}

func deltaSummary(ds []DeltaResult) string {
	var parts []string
	for _, d := range ds {
		if d.Bundle != "" {
			parts = append(parts, fmt.Sprintf("from %s: %s", d.BaseVersion, hardware.Size(d.PatchSize)))
		} else {
			parts = append(parts, fmt.Sprintf("from %s: skipped: %s", d.BaseVersion, d.Skipped))
		}
	}
	return strings.Join(parts, "; ")
}

func stepDelta(ctx context.Context, p *pack, j *job) (string, error) {
	if len(p.o.DeltaFrom) == 0 {
		return "no --delta-from", nil
	}
	if j.res.UPXSize > 0 {
		return UPXDeltaSkip, nil
	}
	bases, err := p.loadBases()
	if err != nil {
		return "", fmt.Errorf("--delta-from: %w", err)
	}
	full := j.res.Manifest
	var mine []deltaBase
	for _, b := range bases {
		if b.m.App == full.App && b.m.Profile == full.Profile && b.m.Sequence < full.Sequence && b.m.Executable.SHA256 != full.Executable.SHA256 {
			mine = append(mine, b)
		}
	}
	if len(mine) == 0 {
		return fmt.Sprintf("no earlier %s bundle for %s in --delta-from (same app, same profile, lower sequence, signed with this key)", full.App, full.Profile), nil
	}
	if len(mine) > protocol.MaxDeltasPerRelease {
		mine = mine[len(mine)-protocol.MaxDeltasPerRelease:]
	}
	newExe, err := os.ReadFile(j.final)
	if err != nil {
		return "", err
	}
	pub := p.o.Key.Public().(minisign.PublicKey)
	kr := protocol.NewKeyring(pub)
	for _, b := range mine {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		d := DeltaResult{From: b.path, BaseVersion: b.m.Version}
		if b.m.UPX {
			d.Skipped = "the earlier bundle is UPX-packed (" + UPXDeltaSkip + ")"
			j.res.Deltas = append(j.res.Deltas, d)
			continue
		}
		if err := p.makeDelta(j, b, kr, newExe, &d); err != nil {
			return "", fmt.Errorf("delta from %s: %w", b.path, err)
		}
		j.res.Deltas = append(j.res.Deltas, d)
	}
	return "", nil
}

func (p *pack) makeDelta(j *job, b deltaBase, kr *protocol.Keyring, newExe []byte, d *DeltaResult) error {
	full := j.res.Manifest
	old, err := readBaseExecutable(b.path, kr)
	if err != nil {
		return err
	}
	patch, st, err := bsdiff.Diff(old, newExe, bsdiff.Options{})
	if err != nil {
		return err
	}
	d.PatchSize = int64(len(patch))
	limit := int64(float64(full.Payload.Size) * p.o.DeltaMaxShare)
	if d.PatchSize >= limit {
		d.Skipped = fmt.Sprintf("patch %s is not clearly smaller than the full payload %s (kept below %.0f%%)",
			hardware.Size(d.PatchSize), hardware.Size(full.Payload.Size), p.o.DeltaMaxShare*100)
		return nil
	}
	pl, err := protocol.DescribePayload(bytes.NewReader(patch), protocol.EncodingNone, full.Payload.ChunkSize)
	if err != nil {
		return err
	}
	pl.Encoding = protocol.EncodingBSDiff
	m := *full
	m.Payload = pl
	sum := sha256.Sum256(old)
	m.Delta = &protocol.Delta{
		Format: protocol.DeltaFormatBSDiff40, BaseSize: int64(len(old)), BaseSHA256: hex.EncodeToString(sum[:]),
		BaseVersion: b.m.Version, FullPayloadSHA256: full.Payload.SHA256, ControlEntries: st.ControlEntries, MaxBzip2Level: bsdiff.Options{}.MaxLevel(),
	}
	if m.Delta.BaseSHA256 != b.m.Executable.SHA256 {
		return fmt.Errorf("decoded base does not match its signed sha256")
	}
	raw, sig, err := protocol.SignManifest(&m, p.o.Key)
	if err != nil {
		return fmt.Errorf("the delta manifest does not validate: %w", err)
	}
	path := filepath.Join(p.o.OutDir, DeltaBundleName(p.app, p.o.Version, j.prof.Name, b.m.Version))
	if err := protocol.WriteBundleFileKeySet(path, p.o.KeySet, raw, sig, bytes.NewReader(patch), pl.Size, p.o.Created); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d.Bundle = path
	return nil
}
