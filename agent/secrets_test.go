package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A config holding a broker password readable by other users is refused
// with what to do; chmod 600 or password_file fixes it.
func TestConfigPasswordReadableByOthersRefused(t *testing.T) {
	dir := t.TempDir()
	base := "device_id: pi-1\ndata_dir: " + filepath.Join(dir, "data") + "\ntrusted_keys: [/etc/k.pub]\napps: []\n"
	cfgPath := filepath.Join(dir, "agent.yaml")
	write := func(body string, mode os.FileMode) {
		if err := os.WriteFile(cfgPath, []byte(base+body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(cfgPath, mode)
	}
	write("broker: {url: tcp://b:1883, username: pi-1, password: s3cret}\n", 0o644)
	_, err := LoadConfig(cfgPath)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "readable by other users") || !strings.Contains(err.Error(), "chmod 600") || !strings.Contains(err.Error(), "password_file") {
		t.Fatalf("a world-readable config with a password: want a refusal saying what to do, got %v", err)
	}
	os.Chmod(cfgPath, 0o600)
	if _, err := LoadConfig(cfgPath); err != nil {
		t.Fatalf("mode 600: %v", err)
	}

	pw := filepath.Join(dir, "broker.pass")
	os.WriteFile(pw, []byte("s3cret\n"), 0o640)
	os.Chmod(pw, 0o640)
	write("broker: {url: tcp://b:1883, username: pi-1, password_file: "+pw+"}\n", 0o644)
	if _, err := LoadConfig(cfgPath); err == nil || !strings.Contains(err.Error(), "broker.password_file") {
		t.Fatalf("a group-readable password file: want a refusal, got %v", err)
	}
	os.Chmod(pw, 0o600)
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatalf("a config without the password is fine at 0644 when the password file is private: %v", err)
	}
	if p, err := cfg.Broker.password(); err != nil || p != "s3cret" {
		t.Fatalf("password from the file: %q %v", p, err)
	}
	write("broker: {url: tcp://b:1883, username: pi-1, password: x, password_file: "+pw+"}\n", 0o600)
	if _, err := LoadConfig(cfgPath); err == nil || !strings.Contains(err.Error(), "both set") {
		t.Fatalf("password and password_file: want a refusal, got %v", err)
	}
}
