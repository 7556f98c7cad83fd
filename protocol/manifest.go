package protocol

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// SchemaVersion is the manifest schema this package writes and the only one
// it accepts.
const SchemaVersion = 1

// Limits on untrusted input. SPEC.md §Limits states them normatively.
const (
	MaxManifestSize   = 1 << 20  // bytes of manifest.json
	MaxSignatureSize  = 4 << 10  // bytes of manifest.json.minisig
	MaxPayloadSize    = 1 << 30  // encoded payload bytes
	MaxExecutableSize = 1 << 30  // decoded executable bytes
	MinChunkSize      = 4 << 10  // smallest allowed chunk
	MaxChunkSize      = 16 << 20 // largest allowed chunk (the reader buffers one)
	MaxXZDictSize     = 64 << 20 // largest xz dictionary a device must accept
	MaxProbeTimeout   = 5 * time.Minute
	maxStringLen      = 256
	maxProbeArgs      = 32

	// MaxVersionLen bounds a version string (bytes). Versions travel in
	// the signature's trusted comment, in device statuses and in the
	// agent's floor file; SPEC.md §3 states it.
	MaxVersionLen = 128
	// MaxStringLen bounds every other free string field of a manifest
	// (build information, probe arguments and expected output).
	MaxStringLen = maxStringLen
	// maxTargetLen bounds goos, goarch, goarm, goamd64 and gomips.
	maxTargetLen = 16
	// maxMachineLen bounds target.elf.machine.
	maxMachineLen = 32
)

// Payload encodings.
const (
	EncodingXZ   = "xz"
	EncodingNone = "none"
)

// Manifest is the signed description of one release of one app for one
// device profile. Field names and JSON tags are the wire format (SPEC.md).
type Manifest struct {
	Schema   int       `json:"schema"`
	App      string    `json:"app"`
	Version  string    `json:"version"`
	Sequence uint64    `json:"sequence"`
	Created  time.Time `json:"created"`
	Profile  string    `json:"profile"`
	Target   Target    `json:"target"`
	Build    Build     `json:"build"`
	UPX      bool      `json:"upx"`
	Payload  Payload   `json:"payload"`
	// Executable describes the program once the payload is decoded.
	Executable Executable `json:"executable"`
	// Expires, when set, is the time after which devices refuse the release.
	Expires *time.Time `json:"expires,omitempty"`
	// Probe, when set, is run on the staged binary before it is swapped in.
	Probe *Probe `json:"probe,omitempty"`
	// MinFreeStorage is the reserve (bytes) a device must keep free after
	// installing.
	MinFreeStorage int64 `json:"min_free_storage"`
	// Delta, set only with payload encoding bsdiff, makes this the manifest
	// of a delta: the payload is a patch from Delta's base executable to
	// Executable (SPEC.md §8.10).
	Delta *Delta `json:"delta,omitempty"`
}

// Target is what the executable needs from the device. GOARM/GOAMD64/GOMIPS
// are invisible in the ELF header, which is why the signed manifest carries
// them (DESIGN.md decision 4).
type Target struct {
	GOOS    string `json:"goos"`
	GOARCH  string `json:"goarch"`
	GOARM   string `json:"goarm,omitempty"`
	GOAMD64 string `json:"goamd64,omitempty"`
	GOMIPS  string `json:"gomips,omitempty"`
	ELF     ELF    `json:"elf"`
}

// ELF identifies the executable's ELF header: class 32 or 64, machine as in
// debug/elf ("EM_ARM"), byte order "little" or "big".
type ELF struct {
	Class   int    `json:"class"`
	Machine string `json:"machine"`
	Endian  string `json:"endian"`
}

// Build records how the executable was built (informational).
type Build struct {
	GoVersion string `json:"go_version"`
	Module    string `json:"module,omitempty"`
	Package   string `json:"package,omitempty"`
	Revision  string `json:"vcs_revision,omitempty"`
	Modified  bool   `json:"vcs_modified,omitempty"`
}

// Payload describes the bytes stored in the bundle (and sent as chunks).
type Payload struct {
	Encoding string `json:"encoding"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	// XZDictSize is the dictionary size the xz stream was written with: the
	// decoder on the device allocates about this much.
	XZDictSize int64    `json:"xz_dict_size,omitempty"`
	ChunkSize  int64    `json:"chunk_size"`
	Chunks     []string `json:"chunks"`
}

// Executable describes the decoded program.
type Executable struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Probe is a command line run against the new binary before the swap: it
// must exit 0 within Timeout and, when Expect is set, print Expect; when
// Match is set, its output must match that regular expression. With StayUp
// set it must instead still be running after StayUp (a server); it is then
// stopped. See SPEC.md §3.
type Probe struct {
	Args    []string `json:"args"`
	Expect  string   `json:"expect,omitempty"`
	Match   string   `json:"match,omitempty"`
	StayUp  Duration `json:"stay_up,omitempty"`
	Timeout Duration `json:"timeout"`
}

// CheckOutput says whether a probe's standard output passes Expect and
// Match: the trimmed output must equal Expect, and Match (RE2 syntax,
// unanchored, multi-line) must match it. A nil error means it passes.
func (p *Probe) CheckOutput(stdout string) error {
	got := strings.TrimSpace(stdout)
	if p.Expect != "" && got != strings.TrimSpace(p.Expect) {
		return fmt.Errorf("printed %q, expected %q", clipString(got, 200), p.Expect)
	}
	if p.Match != "" {
		re, err := regexp.Compile("(?m)" + p.Match)
		if err != nil {
			return fmt.Errorf("probe match %q is not a regular expression: %v", p.Match, err)
		}
		if !re.MatchString(got) {
			return fmt.Errorf("printed %q, which does not match %q", clipString(got, 200), p.Match)
		}
	}
	return nil
}

// Describe is the probe in words: "--version must print \"1.2.3\"".
func (p *Probe) Describe() string {
	s := strings.Join(p.Args, " ")
	if s == "" {
		s = "(no arguments)"
	}
	switch {
	case p.StayUp > 0:
		s += fmt.Sprintf(" must stay up for %s", time.Duration(p.StayUp))
	case p.Expect != "":
		s += fmt.Sprintf(" must print %q", p.Expect)
	case p.Match != "":
		s += fmt.Sprintf(" must exit 0 printing a match of %q", p.Match)
	default:
		s += " must exit 0"
	}
	return s
}

// Validate checks the probe against the limits of SPEC.md §3.
func (p *Probe) Validate() error {
	if len(p.Args) > maxProbeArgs {
		return fmt.Errorf("probe has %d arguments, at most %d", len(p.Args), maxProbeArgs)
	}
	for _, a := range p.Args {
		if len(a) > maxStringLen {
			return fmt.Errorf("probe argument longer than %d", maxStringLen)
		}
	}
	if len(p.Expect) > maxStringLen {
		return fmt.Errorf("probe expect longer than %d", maxStringLen)
	}
	if len(p.Match) > maxStringLen {
		return fmt.Errorf("probe match longer than %d", maxStringLen)
	}
	if p.Match != "" {
		if _, err := regexp.Compile(p.Match); err != nil {
			return fmt.Errorf("probe match is not a regular expression: %v", err)
		}
	}
	if p.StayUp < 0 || p.StayUp > 0 && p.StayUp >= p.Timeout {
		return fmt.Errorf("probe stay_up %s outside 0..timeout %s", time.Duration(p.StayUp), time.Duration(p.Timeout))
	}
	if p.StayUp > 0 && (p.Expect != "" || p.Match != "") {
		return fmt.Errorf("probe with stay_up cannot also expect output")
	}
	if p.Timeout <= 0 || time.Duration(p.Timeout) > MaxProbeTimeout {
		return fmt.Errorf("probe timeout %s outside 0..%s", time.Duration(p.Timeout), MaxProbeTimeout)
	}
	return nil
}

func clipString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Duration is a time.Duration written as a Go duration string ("5s").
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

var (
	appRe     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	profileRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	hexRe     = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// semver 2.0.0, without a leading "v".
	semverRe = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)
)

// ValidApp reports whether s is an acceptable app name (also used in topics
// and file names): lower-case letters, digits, '.', '_', '-', at most 64.
func ValidApp(s string) bool { return appRe.MatchString(s) }

// ValidVersion reports whether s is a semantic version (no leading "v")
// of at most MaxVersionLen bytes.
func ValidVersion(s string) bool { return len(s) <= MaxVersionLen && semverRe.MatchString(s) }

// CheckVersion says in a full sentence what is wrong with version s, or
// returns nil. The error does not wrap a sentinel.
func CheckVersion(s string) error {
	if len(s) > MaxVersionLen {
		return fmt.Errorf("version %q is %d bytes, more than the %d a version may have (SPEC.md §3); use a shorter version, and move long build details to the build metadata the packer records", clip(s), len(s), MaxVersionLen)
	}
	if !semverRe.MatchString(s) {
		return fmt.Errorf("version %q is not a semantic version like 1.2.3 (no leading v)", clip(s))
	}
	return nil
}

// ValidProfileName reports whether s is an acceptable profile name.
func ValidProfileName(s string) bool { return profileRe.MatchString(s) }

// ParseManifest decodes and validates manifest bytes. It is strict: unknown
// fields, trailing data, an unknown schema or inconsistent sizes are errors.
// It does not check signatures; see Keyring.Verify and OpenBundle.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("manifest is %d bytes, more than the %d allowed: %w", len(b), MaxManifestSize, ErrTooLarge)
	}
	// Peek at the schema first so that a future schema gets ErrSchema, not
	// an unknown-field error. The peek is strict about duplicate and
	// case-variant keys too: "Schema" or a second "schema" is malformed.
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := StrictUnmarshalExtensible(b, &head); err != nil {
		return nil, fmt.Errorf("manifest is not valid JSON: %v: %w", err, ErrMalformed)
	}
	if head.Schema == nil {
		return nil, fmt.Errorf("manifest has no schema field: %w", ErrMalformed)
	}
	if *head.Schema != SchemaVersion {
		return nil, fmt.Errorf("manifest schema %d, this build understands %d only; update the agent or pack with a matching edgefleet: %w", *head.Schema, SchemaVersion, ErrSchema)
	}
	var m Manifest
	if err := StrictUnmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrMalformed)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks the manifest's internal consistency and limits.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("manifest: "+format+": %w", append(a, ErrMalformed)...)
	}
	large := func(format string, a ...any) error {
		return fmt.Errorf("manifest: "+format+": %w", append(a, ErrTooLarge)...)
	}
	if m.Schema != SchemaVersion {
		return fmt.Errorf("manifest schema %d, want %d: %w", m.Schema, SchemaVersion, ErrSchema)
	}
	if !ValidApp(m.App) {
		return bad("app %q is not a valid name (lower-case letters, digits, . _ -; at most 64)", clip(m.App))
	}
	if err := CheckVersion(m.Version); err != nil {
		return bad("%v", err)
	}
	if m.Sequence == 0 {
		return bad("sequence must be at least 1")
	}
	if !ValidProfileName(m.Profile) {
		return bad("profile %q is not a valid name", clip(m.Profile))
	}
	if m.Target.GOOS == "" || m.Target.GOARCH == "" {
		return bad("target goos/goarch missing")
	}
	for name, v := range map[string]string{"goos": m.Target.GOOS, "goarch": m.Target.GOARCH, "goarm": m.Target.GOARM, "goamd64": m.Target.GOAMD64, "gomips": m.Target.GOMIPS} {
		if len(v) > maxTargetLen {
			return bad("target %s is %d bytes, at most %d", name, len(v), maxTargetLen)
		}
	}
	for name, v := range map[string]string{"go_version": m.Build.GoVersion, "module": m.Build.Module, "package": m.Build.Package, "vcs_revision": m.Build.Revision} {
		if len(v) > maxStringLen {
			return bad("build %s is %d bytes, at most %d", name, len(v), maxStringLen)
		}
	}
	if m.Target.ELF.Class != 32 && m.Target.ELF.Class != 64 {
		return bad("target elf class %d, want 32 or 64", m.Target.ELF.Class)
	}
	if m.Target.ELF.Endian != "little" && m.Target.ELF.Endian != "big" {
		return bad("target elf endian %q, want little or big", clip(m.Target.ELF.Endian))
	}
	if m.Target.ELF.Machine == "" || len(m.Target.ELF.Machine) > maxMachineLen {
		return bad("target elf machine missing or longer than %d", maxMachineLen)
	}
	p := m.Payload
	switch p.Encoding {
	case EncodingXZ:
		if p.XZDictSize <= 0 || p.XZDictSize > MaxXZDictSize {
			return large("xz dictionary size %d outside 1..%d", p.XZDictSize, MaxXZDictSize)
		}
	case EncodingBSDiff:
		// checked by validateDelta below
	case EncodingNone:
		if p.XZDictSize != 0 {
			return bad("xz_dict_size set on an unencoded payload")
		}
		if p.Size != m.Executable.Size || p.SHA256 != m.Executable.SHA256 {
			return bad("payload encoding none but payload and executable differ")
		}
	default:
		return bad("payload encoding %q, want xz, none or bsdiff", clip(p.Encoding))
	}
	if p.Size <= 0 || p.Size > MaxPayloadSize {
		return large("payload size %d outside 1..%d", p.Size, MaxPayloadSize)
	}
	if m.Executable.Size <= 0 || m.Executable.Size > MaxExecutableSize {
		return large("executable size %d outside 1..%d", m.Executable.Size, MaxExecutableSize)
	}
	if !hexRe.MatchString(p.SHA256) || !hexRe.MatchString(m.Executable.SHA256) {
		return bad("sha256 values must be 64 lower-case hex digits")
	}
	if p.ChunkSize < MinChunkSize || p.ChunkSize > MaxChunkSize {
		return large("chunk size %d outside %d..%d", p.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if want := ChunkCount(p.Size, p.ChunkSize); int64(len(p.Chunks)) != want {
		return bad("%d chunk hashes for %d bytes in chunks of %d, want %d", len(p.Chunks), p.Size, p.ChunkSize, want)
	}
	for i, c := range p.Chunks {
		if !hexRe.MatchString(c) {
			return bad("chunk %d hash is not 64 lower-case hex digits", i)
		}
	}
	if m.Probe != nil {
		if err := m.Probe.Validate(); err != nil {
			return bad("%v", err)
		}
	}
	if m.MinFreeStorage < 0 || m.MinFreeStorage > 1<<40 {
		return large("min_free_storage %d out of range", m.MinFreeStorage)
	}
	return m.validateDelta()
}

// CheckExpiry returns ErrExpired when the manifest has an expiry before now.
func (m *Manifest) CheckExpiry(now time.Time) error {
	if m.Expires != nil && now.After(*m.Expires) {
		return fmt.Errorf("release %s %s expired at %s (now %s); ask the operator for a fresh release, or check this device's clock: %w",
			m.App, m.Version, m.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrExpired)
	}
	return nil
}

// Marshal returns the canonical encoding the packer signs: indented JSON
// with a trailing newline. Readers never re-serialise; they verify the
// stored bytes.
func (m *Manifest) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ChunkCount is the number of chunks for size bytes in chunks of chunkSize.
func ChunkCount(size, chunkSize int64) int64 {
	if size <= 0 || chunkSize <= 0 {
		return 0
	}
	return (size + chunkSize - 1) / chunkSize
}

// ChunkLen is the length of chunk i of a payload of size bytes.
func (p *Payload) ChunkLen(i int) int64 {
	off := int64(i) * p.ChunkSize
	if rest := p.Size - off; rest < p.ChunkSize {
		return rest
	}
	return p.ChunkSize
}

// String is a one-line summary for logs.
func (m *Manifest) String() string {
	t := m.Target.GOOS + "/" + m.Target.GOARCH
	for _, v := range []string{m.Target.GOARM, m.Target.GOAMD64, m.Target.GOMIPS} {
		if v != "" {
			t += " " + v
		}
	}
	return fmt.Sprintf("%s %s (sequence %d, profile %s, %s)", m.App, m.Version, m.Sequence, m.Profile, strings.TrimSpace(t))
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
