package protocol

import (
	"fmt"
	"strings"
)

// Delta releases (SPEC.md §8.10). A delta is a bundle like any other: its
// signed manifest is the full release's manifest (same app, version,
// sequence, profile, target, probe and executable size and sha256) with
// payload.encoding "bsdiff" and a Delta record that binds the base
// executable the patch applies to. Only a device whose installed
// executable has Delta.BaseSHA256 can use it; any other takes the full
// release.

// EncodingBSDiff is the payload encoding of a delta: a BSDIFF40 patch
// (protocol/bsdiff) from the base executable to the release's executable.
const EncodingBSDiff = "bsdiff"

// DeltaFormatBSDiff40 is the only delta format of this version.
const DeltaFormatBSDiff40 = "bsdiff40"

// Limits on deltas (SPEC.md §8.10).
const (
	// MaxDeltaControlEntries bounds the control entries a patch may hold
	// (and Delta.ControlEntries); a patch of the 8 MB agent holds tens of
	// thousands.
	MaxDeltaControlEntries = 1 << 22
	// MaxDeltasPerRelease bounds the deltas one release is published with.
	MaxDeltasPerRelease = 16
)

// Delta binds a delta payload to its base and to the full release.
type Delta struct {
	// Format is DeltaFormatBSDiff40.
	Format string `json:"format"`
	// BaseSize and BaseSHA256 are the executable the patch applies to
	// (the installed one on a device that can use it).
	BaseSize   int64  `json:"base_size"`
	BaseSHA256 string `json:"base_sha256"`
	// BaseVersion is informational (for status and the pack table).
	BaseVersion string `json:"base_version,omitempty"`
	// FullPayloadSHA256 is payload.sha256 of the full release this delta
	// stands in for: the fallback a device takes when the delta fails.
	FullPayloadSHA256 string `json:"full_payload_sha256"`
	// ControlEntries is the exact number of control entries of the patch
	// (at most MaxDeltaControlEntries).
	ControlEntries int64 `json:"control_entries"`
	// MaxBzip2Level is the highest bzip2 block-size level of the patch's
	// three streams (1..9): a device's decoders need about 3 × 400 KB ×
	// this level, so it decides before downloading whether it can afford it.
	MaxBzip2Level int `json:"max_bzip2_level"`
}

// IsDelta reports whether m describes a delta payload.
func (m *Manifest) IsDelta() bool { return m.Delta != nil }

func (m *Manifest) validateDelta() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("delta manifest: "+format+": %w", append(a, ErrMalformed)...)
	}
	isBSDiff := m.Payload.Encoding == EncodingBSDiff
	switch {
	case m.Delta == nil && !isBSDiff:
		return nil
	case m.Delta == nil:
		return bad("payload encoding bsdiff without a delta record (which base does it apply to?)")
	case !isBSDiff:
		return bad("a delta record with payload encoding %q, want bsdiff", clip(m.Payload.Encoding))
	}
	d := m.Delta
	switch {
	case d.Format != DeltaFormatBSDiff40:
		return bad("format %q, this build understands %q only; update the agent", clip(d.Format), DeltaFormatBSDiff40)
	case d.BaseSize <= 0 || d.BaseSize > MaxExecutableSize:
		return fmt.Errorf("delta manifest: base size %d outside 1..%d: %w", d.BaseSize, MaxExecutableSize, ErrTooLarge)
	case !hexRe.MatchString(d.BaseSHA256) || !hexRe.MatchString(d.FullPayloadSHA256):
		return bad("base_sha256 and full_payload_sha256 must be 64 lower-case hex digits")
	case d.BaseSHA256 == m.Executable.SHA256:
		return bad("the base is the result (a delta from a release to itself)")
	case d.FullPayloadSHA256 == m.Payload.SHA256:
		return bad("full_payload_sha256 names the delta's own payload")
	case len(d.BaseVersion) > MaxVersionLen:
		return bad("base_version is %d bytes, at most %d", len(d.BaseVersion), MaxVersionLen)
	case d.ControlEntries < 0 || d.ControlEntries > MaxDeltaControlEntries:
		return fmt.Errorf("delta manifest: %d control entries, at most %d: %w", d.ControlEntries, MaxDeltaControlEntries, ErrTooLarge)
	case d.MaxBzip2Level < 1 || d.MaxBzip2Level > 9:
		return bad("max_bzip2_level %d outside 1..9", d.MaxBzip2Level)
	case m.Payload.XZDictSize != 0:
		return bad("xz_dict_size set on a bsdiff payload")
	case m.UPX:
		return bad("a delta of a UPX-packed executable (UPX output does not diff; deltas are made between unpacked binaries)")
	}
	if d.BaseVersion != "" && !ValidVersion(d.BaseVersion) {
		return bad("base_version %q is not a semantic version", clip(d.BaseVersion))
	}
	return nil
}

// CheckDeltaFor checks that delta (a verified delta manifest) stands in
// for full (the verified full release): the same release in every signed
// field but the payload. A device uses a delta only for the release it
// chose, so a delta can never smuggle in another version, target or probe.
func CheckDeltaFor(delta, full *Manifest) error {
	if !delta.IsDelta() || full.IsDelta() {
		return fmt.Errorf("delta check: want a delta manifest and a full one: %w", ErrMalformed)
	}
	d := *delta
	d.Delta = nil
	d.Payload = full.Payload
	a, err := d.Marshal()
	if err != nil {
		return fmt.Errorf("delta check: %v: %w", err, ErrMalformed)
	}
	b, err := full.Marshal()
	if err != nil {
		return fmt.Errorf("delta check: %v: %w", err, ErrMalformed)
	}
	if string(a) != string(b) {
		return fmt.Errorf("delta for %s does not match the release %s in its signed fields (other than the payload): %w", delta, full, ErrMalformed)
	}
	if delta.Delta.FullPayloadSHA256 != full.Payload.SHA256 {
		return fmt.Errorf("delta for %s names full payload %s, the release's is %s: %w", delta, short(delta.Delta.FullPayloadSHA256), short(full.Payload.SHA256), ErrMalformed)
	}
	return nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// DeltaTopic is where the retained envelope of the delta from the
// executable baseSHA to the executable resultSHA of app lives (SPEC.md
// §8.10): edgefleet/v1/delta/<app>/<result sha256>/<base sha256>. A device
// that chose a release knows both hashes, so it subscribes to the one
// topic; deltas are shared by every channel publishing the release.
func DeltaTopic(app, resultSHA, baseSHA string) (string, error) {
	if !ValidApp(app) {
		return "", topicErr("app", app)
	}
	if !hexRe.MatchString(resultSHA) || !hexRe.MatchString(baseSHA) {
		return "", fmt.Errorf("delta topic: executable sha256 values must be 64 lower-case hex digits: %w", ErrMalformed)
	}
	return Topic{Kind: KindDelta, App: app, SHA256: resultSHA, Base: baseSHA}.String(), nil
}

// DeltasFilter matches every delta to the executable resultSHA of app.
func DeltasFilter(app, resultSHA string) (string, error) {
	t, err := DeltaTopic(app, resultSHA, strings.Repeat("0", 64))
	if err != nil {
		return "", err
	}
	return t[:len(t)-64] + "+", nil
}

// AllDeltasFilter matches every retained delta envelope.
const AllDeltasFilter = TopicPrefix + "delta/+/+/+"

// DeltasFromFilter matches every delta of app whose base is the
// executable baseSHA: what a device running that executable subscribes to
// (SPEC.md §8.10).
func DeltasFromFilter(app, baseSHA string) (string, error) {
	if _, err := DeltaTopic(app, strings.Repeat("0", 64), baseSHA); err != nil {
		return "", err
	}
	return TopicPrefix + "delta/" + app + "/+/" + baseSHA, nil
}
