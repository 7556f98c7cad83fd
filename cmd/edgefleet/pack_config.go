package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	"gopkg.in/yaml.v3"
)

// packConfigName is the pack configuration file looked for in the current
// directory, then in the package's directory (beside the program).
const packConfigName = "edgefleet.yaml"

// packConfig is edgefleet.yaml: what every release of one program shares,
// so a release is `edgefleet pack --version 1.4.0` (docs/pack-config.md).
// Flags override it. Relative paths are relative to the file.
type packConfig struct {
	// App is the app name (default: the package's directory name).
	App string `yaml:"app"`
	// Package is the main package (default: the file's directory).
	Package string `yaml:"package"`
	// Profiles are built-in profile or board names, or inline profiles
	// in the profiles-file form (a mapping with base: and overrides).
	Profiles []yaml.Node `yaml:"profiles"`
	// ProfilesFile is a YAML profiles file (docs/profiles.md).
	ProfilesFile string `yaml:"profiles_file"`
	// UPX turns UPX on (true) or off (false) for every profile; unset:
	// as each profile says.
	UPX *bool `yaml:"upx"`
	// UPXProgram is the upx executable (default: upx on PATH).
	UPXProgram string `yaml:"upx_program"`
	// Budget replaces every profile's max_binary_size.
	Budget hardware.Size `yaml:"budget"`
	// Key is the minisign secret key that signs the manifests.
	Key string `yaml:"key"`
	// Output is the folder the bundles are written to.
	Output string `yaml:"output"`
	// VersionVar is the -X variable; "" packs without stamping.
	VersionVar *string `yaml:"version_var"`
	// Sequence is a number, or "version": major*1000000 + minor*1000 +
	// patch, the same for the same version in every CI run (pre-releases
	// then need --sequence).
	Sequence string `yaml:"sequence"`
	// Probe is the probe; `probe: none` leaves it out.
	Probe *packConfigProbe `yaml:"probe"`
	// Encoding is xz (default) or none.
	Encoding string `yaml:"encoding"`
	// Expires is a duration (720h) or an RFC 3339 time.
	Expires string `yaml:"expires"`
	// DeltaFrom lists earlier releases to make deltas from, as
	// --delta-from: bundles or folders of them (the output folder itself
	// works: only lower sequences of the same app and profile are used).
	DeltaFrom []string `yaml:"delta_from"`
	// KeySet is a key set message (edgefleet keyset chain) put first in
	// every bundle, as --keyset.
	KeySet string `yaml:"keyset"`

	dir string // the file's directory
}

type packConfigProbe struct {
	None    bool          `yaml:"-"`
	Args    []string      `yaml:"args"`
	Expect  string        `yaml:"expect"`
	StayUp  time.Duration `yaml:"stay_up"`
	Timeout time.Duration `yaml:"timeout"`
}

// UnmarshalYAML takes `probe: none` or the mapping.
func (p *packConfigProbe) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value == "none" {
			p.None = true
			return nil
		}
		return fmt.Errorf("line %d: probe: %q: want none or a mapping with args, expect, stay_up, timeout", n.Line, n.Value)
	}
	type plain packConfigProbe
	return n.Decode((*plain)(p))
}

// findPackConfig returns the configuration file to use: explicit, else
// edgefleet.yaml in the current directory, else beside the package (a
// directory path); "" when there is none.
func findPackConfig(explicit, pkg string) string {
	if explicit != "" {
		return explicit
	}
	if fileExistsPlain(packConfigName) {
		return packConfigName
	}
	if pkg != "" && (strings.HasPrefix(pkg, ".") || filepath.IsAbs(pkg)) {
		if p := filepath.Join(pkg, packConfigName); fileExistsPlain(p) {
			return p
		}
	}
	return ""
}

func fileExistsPlain(p string) bool { fi, err := os.Stat(p); return err == nil && !fi.IsDir() }

// loadPackConfig reads a configuration file strictly: an unknown key is an
// error naming it.
func loadPackConfig(path string) (*packConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pack configuration: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c packConfig
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("pack configuration %s: %v (the format, with an example, is in docs/pack-config.md)", path, err)
	}
	c.dir = filepath.Dir(path)
	return &c, nil
}

// path resolves p relative to the file.
func (c *packConfig) path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// pkg is the package to pack: the file's, resolved, or its directory.
func (c *packConfig) pkg() string {
	p := c.Package
	if p == "" {
		p = "."
	}
	if strings.HasPrefix(p, ".") {
		p = c.path(p)
		if !strings.HasPrefix(p, ".") && !filepath.IsAbs(p) {
			p = "./" + p // still a directory path for go build
		}
	}
	return p
}

// profiles resolves the configured profiles against set.
func (c *packConfig) profiles(set *hardware.Set) ([]hardware.Profile, []string) {
	var out []hardware.Profile
	var problems []string
	for _, n := range c.Profiles {
		switch n.Kind {
		case yaml.ScalarNode:
			p, err := set.Lookup(n.Value)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s line %d: %v", packConfigName, n.Line, err))
				continue
			}
			out = append(out, p)
		case yaml.MappingNode:
			doc := yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
				{Kind: yaml.ScalarNode, Value: "profiles"},
				{Kind: yaml.SequenceNode, Content: []*yaml.Node{&n}},
			}}
			b, err := yaml.Marshal(&doc)
			if err == nil {
				var ps []hardware.Profile
				if ps, err = set.ParseProfiles(b); err == nil {
					out = append(out, ps...)
					continue
				}
			}
			problems = append(problems, fmt.Sprintf("%s line %d: inline profile: %v", packConfigName, n.Line, err))
		default:
			problems = append(problems, fmt.Sprintf("%s line %d: a profile is a name or a mapping like in a profiles file", packConfigName, n.Line))
		}
	}
	return out, problems
}

// sequenceFromVersion is the `sequence: version` scheme.
func sequenceFromVersion(v string) (uint64, error) {
	if strings.ContainsAny(v, "-+") {
		base := v[:strings.IndexAny(v, "-+")]
		return 0, fmt.Errorf("sequence: version cannot number the pre-release or build %s (it would share %s's number): give --sequence", v, base)
	}
	var ma, mi, pa uint64
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &ma, &mi, &pa); err != nil {
		return 0, fmt.Errorf("sequence: version: %q is not MAJOR.MINOR.PATCH", v)
	}
	if mi >= 1000 || pa >= 1000 {
		return 0, fmt.Errorf("sequence: version numbers MAJOR*1000000 + MINOR*1000 + PATCH; %s has a part of 1000 or more: give --sequence", v)
	}
	return ma*1_000_000 + mi*1_000 + pa, nil
}

// probe turns the configured probe into the manifest's (nil: auto).
func (p *packConfigProbe) probe() *protocol.Probe {
	if p == nil || p.None {
		return nil
	}
	args := p.Args
	if args == nil {
		args = []string{"--version"}
	}
	return &protocol.Probe{Args: args, Match: p.Expect, StayUp: protocol.Duration(p.StayUp), Timeout: protocol.Duration(p.Timeout)}
}
