package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/hardware"
)

// The example files the docs show load, and mean what the docs say.
func TestDocsExamplesLoad(t *testing.T) {
	dir := "../../docs/examples"
	cfg, err := loadPackConfig(filepath.Join(dir, "edgefleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	set := hardware.DefaultSet()
	ps, bad := cfg.profiles(set)
	if len(bad) > 0 || len(ps) != 3 || ps[2].Name != "gateway-small" || ps[2].MaxBinarySize != 12<<20 || ps[2].GOARCH != "amd64" {
		t.Errorf("edgefleet.yaml profiles: %+v, problems %v", ps, bad)
	}
	if cfg.Sequence != "version" || cfg.Probe == nil || cfg.Probe.probe().Match != `^sensor 1\.` || cfg.Budget != 16<<20 || cfg.UPX == nil || *cfg.UPX {
		t.Errorf("edgefleet.yaml: %+v", cfg)
	}
	if len(cfg.DeltaFrom) != 1 || cfg.path(cfg.DeltaFrom[0]) != filepath.Join(dir, "dist") {
		t.Errorf("edgefleet.yaml delta_from %v, want [dist] relative to the file", cfg.DeltaFrom)
	}
	if got := cfg.path(cfg.Key); got != filepath.Join(dir, "keys/release.key") {
		t.Errorf("key path %q, want it relative to the file", got)
	}
	custom, err := set.LoadProfilesFile(filepath.Join(dir, "profiles.yaml"))
	if err != nil || len(custom) != 3 {
		t.Fatalf("profiles.yaml: %v %+v", err, custom)
	}
	users, err := fleet.LoadUsers(filepath.Join(dir, "users.yaml"))
	if err != nil || users["alice"].Role != fleet.RoleOperator || users["pi-0042"].Role != fleet.RoleDevice {
		t.Fatalf("users.yaml: %v %+v", err, users)
	}
	acl, err := fleet.LoadACL(filepath.Join(dir, "acl.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(acl, fleet.DefaultACL()) {
		t.Errorf("acl.yaml is not the default ACL the docs say it is:\n%+v\n%+v", acl, fleet.DefaultACL())
	}
}

// `edgefleet passwd` prints a users file the broker loads as it is, and
// --add builds one up, refusing a second entry of the same name.
func TestPasswdWritesValidUsersFile(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	env := &cliEnv{stdin: strings.NewReader("correct horse battery\n"), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	if code := run(context.Background(), env, []string{"passwd", "pi-0001"}); code != 0 {
		t.Fatalf("passwd: %d %s", code, errb.String())
	}
	path := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if u, err := fleet.LoadUsers(path); err != nil || u["pi-0001"].Role != fleet.RoleDevice {
		t.Fatalf("passwd output does not load as a users file: %v\n%s", err, out.String())
	}
	env.stdin = strings.NewReader("another long password\n")
	if code := run(context.Background(), env, []string{"passwd", "--role", "operator", "--add", path, "alice"}); code != 0 {
		t.Fatalf("passwd --add: %d %s", code, errb.String())
	}
	if u, err := fleet.LoadUsers(path); err != nil || len(u) != 2 || u["alice"].Role != fleet.RoleOperator {
		t.Fatalf("after --add: %v %+v", err, u)
	}
	before, _ := os.ReadFile(path)
	errb.Reset()
	env.stdin = strings.NewReader("another long password\n")
	if code := run(context.Background(), env, []string{"passwd", "--add", path, "alice"}); code != 1 || !strings.Contains(errb.String(), "already has a user alice") {
		t.Fatalf("a duplicate: exit %d, %s", code, errb.String())
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a refused --add changed the file")
	}
}

// The configuration examples in the README load as they are.
func TestReadmeExamplesLoad(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "```yaml\n")[1:]
	if len(blocks) != 2 {
		t.Fatalf("README has %d yaml blocks, want 2 (edgefleet.yaml, agent.yaml)", len(blocks))
	}
	dir := t.TempDir()
	pack := filepath.Join(dir, "edgefleet.yaml")
	os.WriteFile(pack, []byte(strings.Split(blocks[0], "```")[0]), 0o644)
	cfg, err := loadPackConfig(pack)
	if err != nil {
		t.Fatalf("README edgefleet.yaml: %v", err)
	}
	if ps, bad := cfg.profiles(hardware.DefaultSet()); len(bad) > 0 || len(ps) != 2 {
		t.Fatalf("README edgefleet.yaml profiles: %v %v", ps, bad)
	}
	ag := filepath.Join(dir, "agent.yaml")
	// Mode 600, as the README says for a config holding a password.
	os.WriteFile(ag, []byte(strings.Split(blocks[1], "```")[0]), 0o600)
	c, err := agent.LoadConfig(ag)
	if err != nil {
		t.Fatalf("README agent.yaml: %v", err)
	}
	if c.DeviceID != "pi-017" || len(c.Apps) != 1 || c.Broker == nil || c.Broker.Channel != "stable" {
		t.Fatalf("README agent.yaml: %+v", c)
	}
}
