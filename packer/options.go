package packer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// DefaultVersionVar is the variable stamped with the version unless
// Options.VersionVar says otherwise.
const DefaultVersionVar = "main.version"

// DefaultCacheMaxBytes is the pack cache size bound unless
// Options.CacheMaxBytes says otherwise.
const DefaultCacheMaxBytes = 1 << 30

// Defaults for the probe.
const (
	// DefaultProbeTimeout is the probe timeout written into the manifest:
	// how long the device lets the new binary take to answer.
	DefaultProbeTimeout = 10 * time.Second
	// DefaultEmulatedProbeTimeout bounds the probe under qemu-user on the
	// packing host, where emulation is slower than the real device.
	DefaultEmulatedProbeTimeout = 60 * time.Second
)

// Options says what to pack and how. Zero values take the documented
// defaults; call Validate (Pack does) before use.
type Options struct {
	// Package is the main package to build, as `go build` takes it
	// ("./cmd/myapp", an import path). Required.
	Package string
	// Dir is where go commands run (inside the module that holds
	// Package). Default: the current directory.
	Dir string
	// App is the app name in the manifest and the bundle file name.
	// Default: the base name of the package's directory.
	App string
	// Version is the semantic version stamped with -X and signed.
	// Required. Go's tag style (v1.2.3) is accepted: Validate drops the v.
	Version string
	// Sequence is the monotonic release number per app: devices refuse a
	// sequence lower than the one installed. Required, at least 1.
	Sequence uint64
	// Key signs the manifests. Required.
	Key protocol.PrivateKey
	// Profiles are the device profiles to pack for, in output order.
	// Required; each is normalized by Validate.
	Profiles []hardware.Profile
	// OutDir receives the bundles. Required; created if missing.
	OutDir string
	// DeltaFrom lists earlier releases to make delta bundles from: bundle
	// files (.efb) or directories holding them (not searched recursively).
	// For each profile, a delta is made from every full bundle of the same
	// app and profile with a lower sequence, signed with Key, and written
	// beside the full bundle as <app>_<version>_<profile>.from-<base
	// version>.efb — only when it is clearly smaller than the full payload
	// (DeltaMaxShare). UPX profiles get none. Default: no deltas.
	DeltaFrom []string
	// DeltaMaxShare is the largest delta kept, as a share of the full
	// payload. Default 0.5.
	DeltaMaxShare float64
	// VersionVar is the variable -X sets, "<import path>.<name>".
	// Default: DefaultVersionVar ("main.version"), and then optional: a
	// program that does not declare it is packed without stamping and the
	// version-var step says so (the version still lives in the signed
	// manifest). A variable named here must exist.
	VersionVar string
	// NoStamp packs without -X: the version is only in the manifest.
	NoStamp bool
	// UPX is the upx program. Default: "upx" on PATH, looked up only when
	// a profile asks for UPX.
	UPX string
	// Jobs bounds how many profiles build at once. Default:
	// runtime.GOMAXPROCS(0).
	Jobs int
	// Created is the manifest's creation time and the bundle's tar
	// mtime. Zero: SOURCE_DATE_EPOCH when set, else the Unix epoch (so
	// bundles are reproducible).
	Created time.Time
	// Expires, when set, is written into the manifest: devices refuse the
	// release after it.
	Expires *time.Time
	// Probe is the check the device runs before swapping, also run here
	// under qemu-user. Nil: chosen per profile under emulation (see
	// AutoProbes): `--version` printing the version, else `--version` or
	// `-h` exiting 0; without an emulator, DefaultProbe(Version) when the
	// version was stamped, else no probe.
	Probe *protocol.Probe
	// NoProbe leaves the probe out of the manifests and skips the
	// emulated run.
	NoProbe bool
	// ProbeTimeout bounds the emulated probe run. Default:
	// DefaultEmulatedProbeTimeout.
	ProbeTimeout time.Duration
	// Encoding is the payload encoding, protocol.EncodingXZ (default) or
	// protocol.EncodingNone.
	Encoding string
	// GoCmd is the go command. Default: "go".
	GoCmd string
	// Env is added to the environment of go, upx and qemu (after
	// os.Environ, before the profile's build variables).
	Env []string
	// LDFlags are extra -ldflags arguments appended after the packer's own
	// (e.g. "-X main.crash=1" to build a deliberately broken test
	// release). Default: none.
	LDFlags []string
	// MeasureUnstripped also links each profile without -s -w to report
	// the unstripped size (one extra link per profile). An over-budget
	// profile is always linked unstripped to list its biggest packages.
	MeasureUnstripped bool
	// KeySet is a key set chain message (protocol/SPEC.md §8.12, what
	// `edgefleet keyset chain` writes), put first in every bundle as
	// keyset.json so a device off the network learns the key that signed
	// it. Validate parses it (signatures are the devices' business) and
	// refuses one whose newest key set revokes Key. Agents older than the
	// keyset.json entry refuse such bundles: set it only once the fleet
	// runs an agent that reads it. Default: none (bundles as before).
	KeySet []byte

	// Progress, when set, is called as steps start and end. Calls are
	// serialized.
	Progress func(Event)

	// CacheDir holds the pack cache: encoded payloads, upx outputs and
	// passed probes, keyed by the sha256 of everything that determines
	// them (see cache.go), so a warm pack of unchanged code skips xz, upx
	// and qemu. Default: $EDGEFLEET_CACHE when set, else
	// os.UserCacheDir()/edgefleet/pack; when neither can be found (no
	// $HOME), or the directory cannot be created, the pack runs without a
	// cache and says so in the resolve step's detail.
	CacheDir string
	// NoCache neither reads nor writes the pack cache.
	NoCache bool
	// CacheMaxBytes bounds the cache: after a pack, at most once an hour,
	// the least recently used entries are removed until it holds at most
	// this many bytes. Default: DefaultCacheMaxBytes (1 GiB).
	CacheMaxBytes int64

	// lookupEnv reads SOURCE_DATE_EPOCH; tests replace it.
	lookupEnv func(string) (string, bool)
	// autoProbe: Probe was nil, so each profile picks one (AutoProbes).
	autoProbe bool
	// optionalVar: VersionVar took its default, so it may be missing.
	optionalVar bool
}

// DefaultProbe is the probe used when Options.Probe is nil: `--version`
// must print the version.
func DefaultProbe(version string) *protocol.Probe {
	return &protocol.Probe{Args: []string{"--version"}, Expect: version, Timeout: protocol.Duration(DefaultProbeTimeout)}
}

// NormalizeVersion drops the v of Go's tag style (v1.2.3 -> 1.2.3) when
// the rest is a semantic version; anything else is returned unchanged.
func NormalizeVersion(v string) string {
	if len(v) > 1 && (v[0] == 'v' || v[0] == 'V') && protocol.CheckVersion(v[1:]) == nil {
		return v[1:]
	}
	return v
}

// Validate fills defaults and checks the options. It normalizes the
// profiles in place. It reports every problem it finds, joined, each
// wrapping ErrOptions.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, a ...any) error {
		errs = append(errs, fmt.Errorf(format+": %w", append(a, ErrOptions)...))
		return nil
	}
	o.validate(bad)
	return errors.Join(errs...)
}

func (o *Options) validate(bad func(string, ...any) error) {
	if o.Package == "" {
		bad("no package to pack: give the main package, e.g. ./cmd/myapp")
	}
	if o.Dir == "" && o.Package != "" {
		o.Dir = "."
		// A directory path (./cmd/app, ../other/cmd/app, /abs/app) is
		// built from inside that directory, so the module that holds it
		// is used even when the current directory is in another module
		// or in none.
		if isDirPath(o.Package) {
			abs, err := filepath.Abs(o.Package)
			if err != nil {
				bad("package %s: %v", o.Package, err)
			} else if st, err := os.Stat(abs); err != nil || !st.IsDir() {
				bad("package %s is not a directory", o.Package)
			} else {
				o.Dir, o.Package = abs, "."
			}
		}
	}
	if o.App != "" && !protocol.ValidApp(o.App) {
		bad("app name %q is not valid: use lower-case letters, digits, '.', '_' and '-' (at most 64)", o.App)
	}
	o.Version = NormalizeVersion(o.Version)
	if o.Version == "" {
		bad("no version: give the release's semantic version, e.g. 1.4.0")
	} else if err := protocol.CheckVersion(o.Version); err != nil {
		bad("%v", err)
	}
	if o.Sequence == 0 {
		bad("sequence must be at least 1: it is the anti-rollback counter devices compare")
	}
	if o.Key.ID() == 0 {
		bad("no signing key: load one with protocol.ParsePrivateKey (edgefleet keygen makes one)")
	}
	if o.KeySet != nil {
		if _, docs, err := protocol.ParseKeySetChain(o.KeySet); err != nil {
			bad("key set: %v", err)
		} else if ks := docs[len(docs)-1]; o.Key.ID() != 0 {
			id := protocol.KeyID16(o.Key.ID())
			for _, r := range ks.Revoked {
				if r == id {
					bad("key set version %d revokes the signing key %s: every device holding it would refuse these bundles; sign with a release key the key set names", ks.Version, protocol.KeyID(o.Key.ID()))
				}
			}
		}
	}
	if len(o.Profiles) == 0 {
		bad("no profiles: pick at least one (edgefleet profiles lists them)")
	}
	seen := map[string]bool{}
	for i := range o.Profiles {
		if err := o.Profiles[i].Normalize(); err != nil {
			bad("%v", err)
			continue
		}
		if seen[o.Profiles[i].Name] {
			bad("profile %s given twice", o.Profiles[i].Name)
		}
		seen[o.Profiles[i].Name] = true
	}
	if o.OutDir == "" {
		bad("no output directory")
	}
	if o.VersionVar == "" {
		o.VersionVar = DefaultVersionVar
		o.optionalVar = true
	}
	if i := strings.LastIndex(o.VersionVar, "."); i <= 0 || i == len(o.VersionVar)-1 {
		bad("version variable %q must look like main.version or example.com/pkg/buildinfo.Version", o.VersionVar)
	}
	if o.DeltaMaxShare == 0 {
		o.DeltaMaxShare = 0.5
	}
	if o.DeltaMaxShare < 0 || o.DeltaMaxShare > 1 {
		bad("delta max share %v outside (0, 1]", o.DeltaMaxShare)
	}
	for _, d := range o.DeltaFrom {
		if _, err := os.Stat(d); err != nil {
			bad("--delta-from %s: %v; give earlier bundles (.efb) or a directory holding them", d, err)
		}
	}
	if o.Jobs <= 0 {
		o.Jobs = runtime.GOMAXPROCS(0)
	}
	if o.Created.IsZero() {
		lookup := o.lookupEnv
		if lookup == nil {
			lookup = os.LookupEnv
		}
		o.Created = time.Unix(0, 0)
		if s, ok := lookup("SOURCE_DATE_EPOCH"); ok && s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				bad("SOURCE_DATE_EPOCH=%q is not a number of seconds since 1970", s)
			}
			o.Created = time.Unix(n, 0)
		}
	}
	o.Created = o.Created.UTC().Truncate(time.Second)
	if o.Expires != nil && !o.Expires.After(o.Created) {
		bad("expiry %s is not after the creation time %s", o.Expires.UTC().Format(time.RFC3339), o.Created.Format(time.RFC3339))
	}
	o.autoProbe = o.Probe == nil && !o.NoProbe
	if o.NoProbe {
		o.Probe = nil
	}
	if o.Probe != nil {
		if o.Probe.Timeout <= 0 {
			o.Probe.Timeout = protocol.Duration(DefaultProbeTimeout)
		}
		if err := o.Probe.Validate(); err != nil {
			bad("%v", err)
		}
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = DefaultEmulatedProbeTimeout
	}
	switch o.Encoding {
	case "":
		o.Encoding = protocol.EncodingXZ
	case protocol.EncodingXZ, protocol.EncodingNone:
	default:
		bad("payload encoding %q: want xz or none", o.Encoding)
	}
	if o.GoCmd == "" {
		o.GoCmd = "go"
	}
	if o.CacheMaxBytes < 0 {
		bad("cache size bound %d is negative", o.CacheMaxBytes)
	}
	if o.CacheMaxBytes == 0 {
		o.CacheMaxBytes = DefaultCacheMaxBytes
	}
	if o.NoCache {
		o.CacheDir = ""
	} else if o.CacheDir == "" {
		lookup := o.lookupEnv
		if lookup == nil {
			lookup = os.LookupEnv
		}
		if d, ok := lookup("EDGEFLEET_CACHE"); ok && d != "" {
			o.CacheDir = d
		} else if d, err := os.UserCacheDir(); err == nil {
			o.CacheDir = filepath.Join(d, "edgefleet", "pack")
		}
	}
}

// isDirPath reports whether pkg is written as a filesystem path rather
// than an import path: absolute, or starting with ./ or ../ (or "." / "..").
func isDirPath(pkg string) bool {
	return filepath.IsAbs(pkg) || pkg == "." || pkg == ".." ||
		strings.HasPrefix(pkg, "./") || strings.HasPrefix(pkg, "../")
}
