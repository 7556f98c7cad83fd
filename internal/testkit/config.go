package testkit

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// AgentConfig is an edgefleet-agent configuration for a test device;
// WriteAgentConfig writes it as YAML (the agent's config format).
type AgentConfig struct {
	// DeviceID defaults to "test-device".
	DeviceID string
	// DataDir is the data directory; required.
	DataDir string
	// TrustedKeys are public key files (from Keys); required unless
	// RootKeys are given.
	TrustedKeys []string
	// RootKeys are root public key files (root_keys); default none.
	RootKeys []string
	// Apps are the supervised apps.
	Apps []AgentApp
	// Broker is the MQTT broker URL; empty leaves the broker section out.
	Broker string
	// Channel is the release channel with a broker. Default "stable".
	Channel string
}

// AgentApp is one supervised app; zero fields are left out of the file
// (the agent's defaults apply) unless a default is given here.
type AgentApp struct {
	Name, Path string
	Args       []string
	// Window is health.window. Default "1s".
	Window string
	// HealthCommand is health.command.
	HealthCommand []string
	// HealthTimeout is health.timeout.
	HealthTimeout   string
	MaxRestarts     int
	MaxBootsOnTrial int
}

// WriteAgentConfig writes c as YAML to path.
func WriteAgentConfig(t testing.TB, path string, c AgentConfig) {
	t.Helper()
	if c.DeviceID == "" {
		c.DeviceID = "test-device"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "device_id: %s\ndata_dir: %s\n", c.DeviceID, c.DataDir)
	if len(c.TrustedKeys) > 0 || len(c.RootKeys) == 0 {
		fmt.Fprintf(&b, "trusted_keys: %s\n", yamlList(c.TrustedKeys))
	}
	if len(c.RootKeys) > 0 {
		fmt.Fprintf(&b, "root_keys: %s\n", yamlList(c.RootKeys))
	}
	b.WriteString("apps:\n")
	for _, a := range c.Apps {
		if a.Window == "" {
			a.Window = "1s"
		}
		fmt.Fprintf(&b, "  - name: %s\n    path: %s\n", a.Name, a.Path)
		if a.Args != nil {
			fmt.Fprintf(&b, "    args: %s\n", yamlList(a.Args))
		}
		fmt.Fprintf(&b, "    health:\n      window: %s\n", a.Window)
		if a.HealthCommand != nil {
			fmt.Fprintf(&b, "      command: %s\n", yamlList(a.HealthCommand))
		}
		if a.HealthTimeout != "" {
			fmt.Fprintf(&b, "      timeout: %s\n", a.HealthTimeout)
		}
		if a.MaxRestarts != 0 {
			fmt.Fprintf(&b, "      max_restarts: %d\n", a.MaxRestarts)
		}
		if a.MaxBootsOnTrial != 0 {
			fmt.Fprintf(&b, "      max_boots_on_trial: %d\n", a.MaxBootsOnTrial)
		}
	}
	if c.Broker != "" {
		if c.Channel == "" {
			c.Channel = "stable"
		}
		fmt.Fprintf(&b, "broker:\n  url: %s\n  channel: %s\n", c.Broker, c.Channel)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// yamlList is a flow sequence of double-quoted strings.
func yamlList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
