package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	"gopkg.in/yaml.v3"
)

// DefaultConfigPath is where edgefleet-agent looks for its configuration.
const DefaultConfigPath = "/etc/edgefleet/agent.yaml"

// SelfApp is the name of the app that is the agent itself: a bundle for it
// updates the agent like any other app (swap, re-exec, trial, commit).
const SelfApp = "edgefleet-agent"

// Defaults applied by Config.Validate when a field is zero.
const (
	DefaultHealthWindow    = 10 * time.Second
	DefaultHealthTimeout   = 5 * time.Second
	DefaultMaxBootsOnTrial = 3
	DefaultMaxRestarts     = 3
)

// Config is the agent's configuration file (YAML). Unknown keys are an
// error, so a typo never silently disables a check.
type Config struct {
	// DeviceID names this device in the fleet. Required.
	DeviceID string `yaml:"device_id"`
	// DataDir holds the state database (state.db) and the control socket
	// (agent.sock). Required; created if missing.
	DataDir string `yaml:"data_dir"`
	// TrustedKeys are minisign public key files. At least one; several
	// allow key rotation.
	TrustedKeys []string `yaml:"trusted_keys"`
	// RootKeys are minisign public key files of the offline root(s) that
	// sign key sets (protocol/SPEC.md §8.12); with them the device takes
	// its release keys from the newest key set it verified. Optional;
	// trusted_keys or root_keys (or both) must be given.
	RootKeys []string `yaml:"root_keys,omitempty"`
	// RootThreshold is how many of RootKeys must sign the first key set.
	// Default 1.
	RootThreshold int `yaml:"root_threshold,omitempty"`
	// Apps are the programs this agent installs and supervises.
	Apps []AppConfig `yaml:"apps"`
	// Profile, when set, is the device profile this device subscribes to
	// (issue 4). Empty: the agent picks from its CPU facts.
	Profile string `yaml:"profile,omitempty"`
	// Broker is the MQTT connection (issue 4). Nil: sideload only.
	Broker *BrokerConfig `yaml:"broker,omitempty"`
	// Limits bounds what an install may cost this device.
	Limits LimitsConfig `yaml:"limits,omitempty"`
	// Labels describe this device (site: berlin, hw: rev2): reported in
	// its status and matched by rollout selectors (SPEC.md §8.8). Keys
	// [a-z0-9][a-z0-9._-]{0,31}, values [A-Za-z0-9._-]{0,63}, at most 16.
	Labels protocol.Labels `yaml:"labels,omitempty"`
	// Maintenance, when set, restricts installs of releases received over
	// MQTT to its windows (window.go). Nil: install at once.
	Maintenance *MaintenanceConfig `yaml:"maintenance,omitempty"`
	// Mirrors are base URLs of HTTP(S) mirrors of release chunks
	// (protocol/SPEC.md §8.9), tried after those a release lists and
	// before the broker's chunks. Top level, not under broker: a mirror
	// serves payloads whichever broker the device talks to. At most 8,
	// http:// or https://. Default none.
	Mirrors []string `yaml:"mirrors,omitempty"`
	// MirrorCA is a PEM file of CA certificates trusted for https
	// mirrors in addition to the system roots (a mirror with a private
	// CA). A chunk is verified against its signed hash either way: TLS
	// keeps what a device fetches private, not genuine. Default none.
	MirrorCA string `yaml:"mirror_ca,omitempty"`
}

// LimitsConfig bounds what an install may cost this device. Unknown keys
// are an error, as everywhere in the file.
type LimitsConfig struct {
	// MaxDecoderMemory is the largest xz dictionary (payload.xz_dict_size
	// in the signed manifest: what the decoder allocates) this device
	// accepts, e.g. "16MiB"; a release declaring more is refused before
	// staging. Default (zero): a quarter of MemAvailable when the agent
	// starts, at most 64MiB (the most a manifest may declare) and at least
	// 1MiB (DefaultMaxDecoderMemory).
	MaxDecoderMemory hardware.Size `yaml:"max_decoder_memory,omitempty"`
}

// AppConfig is one installed and supervised program.
type AppConfig struct {
	// Name must match the app name in the bundles' signed manifests.
	Name string `yaml:"name"`
	// Path is the absolute path of the executable. Its directory holds the
	// staged file (.<name>.staged) and the previous binary (<name>.prev).
	Path string `yaml:"path"`
	// Args and Env are given to the supervised process.
	Args []string `yaml:"args"`
	Env  []string `yaml:"env"`
	// Health is the trial policy after an install.
	Health HealthConfig `yaml:"health"`
}

// HealthConfig is how a new release proves itself on trial.
type HealthConfig struct {
	// Window is how long the app must stay up on trial. Default 10s.
	Window Duration `yaml:"window"`
	// Command, optional, must exit 0 at the end of the window.
	Command []string `yaml:"command"`
	// Timeout bounds Command. Default 5s.
	Timeout Duration `yaml:"timeout"`
	// MaxBootsOnTrial: when the agent starts this many times and the app is
	// still on trial, it is rolled back. Default 3.
	MaxBootsOnTrial int `yaml:"max_boots_on_trial"`
	// MaxRestarts: crashes during the trial window before it counts as a
	// crash loop and is rolled back. Default 3.
	MaxRestarts int `yaml:"max_restarts"`
}

// MaxBrokerURLs is the most brokers broker.urls may list.
const MaxBrokerURLs = 16

// BrokerConfig is the MQTT connection (used from issue 4 on).
type BrokerConfig struct {
	// URL is the one broker: tcp://host:1883 or ssl://host:8883. Set URL
	// or URLs, not both.
	URL string `yaml:"url,omitempty"`
	// URLs are several brokers (the nodes of a cluster, or standbys), at
	// most MaxBrokerURLs, all plain or all encrypted. The agent connects
	// to one and moves to the next when it fails; each device walks them
	// in its own order (a shuffle seeded by its device id, see
	// brokerOrder), so the devices of a failed node spread over the others.
	URLs     []string `yaml:"urls,omitempty"`
	Channel  string   `yaml:"channel"`
	CA       string   `yaml:"ca,omitempty"`
	Cert     string   `yaml:"cert,omitempty"`
	Key      string   `yaml:"key,omitempty"`
	Username string   `yaml:"username,omitempty"`
	Password string   `yaml:"password,omitempty"`
	// PasswordFile is an absolute path to a file whose first line is the
	// broker password (instead of password). Like a config holding a
	// password, it must not be readable by group or others (secrets.go).
	PasswordFile string `yaml:"password_file,omitempty"`
}

// Duration is a time.Duration written in YAML as "10s".
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: a duration must be a string like \"10s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration like \"10s\"", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as a duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// LoadConfig reads and validates a configuration file. Unknown keys are an
// error; Validate fills the defaults.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	if err := cfg.checkSecrets(path); err != nil { // secrets.go
		return nil, err
	}
	return cfg, nil
}

// ParseConfig decodes configuration YAML strictly and validates it.
func ParseConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("the file is empty: %w", ErrConfig)
		}
		return nil, fmt.Errorf("%v: %w", err, ErrConfig)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("more than one YAML document: %w", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Validate checks the configuration and fills defaults.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf(format+": %w", append(a, ErrConfig)...)
	}
	if strings.TrimSpace(c.DeviceID) == "" {
		return bad("device_id is required")
	}
	if c.DataDir == "" {
		return bad("data_dir is required (for example /var/lib/edgefleet)")
	}
	if !filepath.IsAbs(c.DataDir) {
		return bad("data_dir %q must be an absolute path", c.DataDir)
	}
	// Validate runs again on a config the daemon is using (Open after a
	// reset): assign only what changes, so a second run writes nothing.
	if clean := filepath.Clean(c.DataDir); clean != c.DataDir {
		c.DataDir = clean
	}
	if err := protocol.CheckMirrors(c.Mirrors); err != nil {
		return bad("mirrors: %v", err)
	}
	if c.MirrorCA != "" {
		if _, err := mirrorRoots(c.MirrorCA); err != nil {
			return bad("mirror_ca: %v", err)
		}
	}
	if len(c.TrustedKeys) == 0 && len(c.RootKeys) == 0 {
		return bad("trusted_keys needs at least one minisign public key file (or give root_keys: the offline root's public keys)")
	}
	if c.RootThreshold == 0 {
		c.RootThreshold = 1
	}
	if len(c.RootKeys) > 0 && (c.RootThreshold < 1 || c.RootThreshold > len(c.RootKeys)) {
		return bad("root_threshold %d must be between 1 and the number of root_keys (%d)", c.RootThreshold, len(c.RootKeys))
	}
	seen := map[string]bool{}
	paths := map[string]string{}
	for i := range c.Apps {
		a := &c.Apps[i]
		if !protocol.ValidApp(a.Name) {
			return bad("apps[%d]: name %q is not a valid app name (lower-case letters, digits, . _ -)", i, a.Name)
		}
		if seen[a.Name] {
			return bad("app %s is configured twice", a.Name)
		}
		seen[a.Name] = true
		if a.Path == "" || !filepath.IsAbs(a.Path) {
			return bad("app %s: path %q must be an absolute path to the executable", a.Name, a.Path)
		}
		if clean := filepath.Clean(a.Path); clean != a.Path {
			a.Path = clean
		}
		if other, ok := paths[a.Path]; ok {
			return bad("apps %s and %s share the path %s", other, a.Name, a.Path)
		}
		paths[a.Path] = a.Name
		h := &a.Health
		if h.Window == 0 {
			h.Window = Duration(DefaultHealthWindow)
		}
		if h.Timeout == 0 {
			h.Timeout = Duration(DefaultHealthTimeout)
		}
		if h.MaxBootsOnTrial == 0 {
			h.MaxBootsOnTrial = DefaultMaxBootsOnTrial
		}
		if h.MaxRestarts == 0 {
			h.MaxRestarts = DefaultMaxRestarts
		}
		if h.MaxBootsOnTrial < 0 || h.MaxRestarts < 0 {
			return bad("app %s: health max_boots_on_trial and max_restarts must be positive", a.Name)
		}
	}
	if c.Profile != "" && !protocol.ValidProfileName(c.Profile) {
		return bad("profile %q is not a valid profile name", c.Profile)
	}
	if m := c.Limits.MaxDecoderMemory; m != 0 && m < minDecoderMemory {
		return bad("limits.max_decoder_memory %s is below %s; no xz stream decodes with less (the profiles use 1MiB to 4MiB)", m, hardware.Size(minDecoderMemory))
	}
	if err := c.Labels.Validate(); err != nil {
		return bad("labels: %v (e.g. labels: {site: berlin, hw: rev2})", strings.TrimSuffix(err.Error(), ": "+protocol.ErrMalformed.Error()))
	}
	if c.Maintenance != nil {
		if err := c.Maintenance.validate(); err != nil {
			return bad("%v", err)
		}
	}
	if c.Broker != nil {
		if err := c.Broker.validate(c.DeviceID); err != nil {
			return bad("%v", err)
		}
	}
	return nil
}

// validate checks the broker section when the config loads, so a typo is
// reported by `edgefleet-agent run` at once instead of as a silent retry
// loop in the log. It fills the channel default ("stable").
func (b *BrokerConfig) validate(deviceID string) error {
	switch {
	case b.URL != "" && len(b.URLs) > 0:
		return fmt.Errorf("broker.url and broker.urls are both set; list every broker under broker.urls (broker.url is the shorthand for one)")
	case b.URL == "" && len(b.URLs) == 0:
		return fmt.Errorf("broker.url is missing: want tcp://host:1883 or ssl://host:8883 (or broker.urls: [tcp://a:1883, tcp://b:1883] for several brokers)")
	case len(b.URLs) > MaxBrokerURLs:
		return fmt.Errorf("broker.urls lists %d brokers; at most %d", len(b.URLs), MaxBrokerURLs)
	}
	key := "broker.url"
	if len(b.URLs) > 0 {
		key = "broker.urls"
	}
	tls, seen := false, map[string]bool{}
	for i, u := range b.Servers() {
		enc, err := checkBrokerURL(u)
		if len(b.URLs) > 0 {
			key = fmt.Sprintf("broker.urls[%d]", i)
		}
		if err != nil {
			return fmt.Errorf("%s %w", key, err)
		}
		if seen[u] {
			return fmt.Errorf("%s: %s is listed twice", key, u)
		}
		seen[u] = true
		if i > 0 && enc != tls {
			return fmt.Errorf("broker.urls mixes encrypted (ssl://, tls://, mqtts://, wss://) and plain URLs; the same credentials would go in clear to some brokers: make them all one kind")
		}
		tls = enc
	}
	if b.Channel == "" {
		b.Channel = "stable"
	}
	if !protocol.ValidChannel(b.Channel) {
		return fmt.Errorf("broker.channel %q is not a valid channel name (lower-case letters, digits, . _ -)", b.Channel)
	}
	if err := protocol.CheckDeviceID(deviceID); err != nil {
		return fmt.Errorf("device_id: %v", err)
	}
	if (b.Cert == "") != (b.Key == "") {
		return fmt.Errorf("broker.cert and broker.key go together: a client certificate needs its key")
	}
	if !tls && (b.CA != "" || b.Cert != "") {
		if len(b.URLs) > 0 {
			return fmt.Errorf("broker.urls are not encrypted but broker.ca/cert/key are set; use ssl://host:8883 URLs for TLS")
		}
		return fmt.Errorf("broker.url %s is not encrypted but broker.ca/cert/key are set; use ssl://host:8883 for TLS", b.URL)
	}
	if err := b.checkPasswordFileConfig(); err != nil { // secrets.go
		return err
	}
	if b.Password != "" && b.Username == "" {
		return fmt.Errorf("broker.password is set without broker.username")
	}
	return nil
}

// Servers returns the configured broker URLs: broker.urls, or broker.url
// alone.
func (b *BrokerConfig) Servers() []string {
	if len(b.URLs) > 0 {
		return b.URLs
	}
	if b.URL == "" {
		return nil
	}
	return []string{b.URL}
}

// checkBrokerURL checks one broker URL and says whether it is encrypted.
// The error starts with the URL quoted.
func checkBrokerURL(raw string) (encrypted bool, err error) {
	scheme, _, ok := strings.Cut(raw, "://")
	if raw == "" || !ok {
		return false, fmt.Errorf("%q: want tcp://host:1883 or ssl://host:8883", raw)
	}
	switch scheme {
	case "tcp", "mqtt", "ws":
	case "ssl", "tls", "mqtts", "wss":
		encrypted = true
	default:
		return false, fmt.Errorf("%q: scheme %q is not one of tcp, mqtt, ssl, tls, mqtts, ws, wss", raw, scheme)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		return false, fmt.Errorf("%q: no host; want %s://host:port", raw, scheme)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return false, fmt.Errorf("%q: port %q is not a number from 1 to 65535", raw, p)
		}
	}
	return encrypted, nil
}

// App returns the configuration of the named app.
func (c *Config) App(name string) (*AppConfig, bool) {
	for i := range c.Apps {
		if c.Apps[i].Name == name {
			return &c.Apps[i], true
		}
	}
	return nil, false
}

// StatePath is the bbolt state database in DataDir.
func (c *Config) StatePath() string { return filepath.Join(c.DataDir, "state.db") }

// SocketPath is the daemon's control socket in DataDir.
func (c *Config) SocketPath() string { return filepath.Join(c.DataDir, "agent.sock") }

// stagedPath is where a new binary is written before the swap: next to the
// target, so the rename is atomic (same filesystem).
func (a *AppConfig) stagedPath() string {
	return filepath.Join(filepath.Dir(a.Path), "."+filepath.Base(a.Path)+".staged")
}

// restorePath is the temporary hard link a rollback renames over the target.
func (a *AppConfig) restorePath() string {
	return filepath.Join(filepath.Dir(a.Path), "."+filepath.Base(a.Path)+".restore")
}

// PrevPath is the previous binary, kept as a hard link for rollback.
func (a *AppConfig) PrevPath() string { return a.Path + ".prev" }

func dirOf(p string) string { return filepath.Dir(p) }
