package agent

// Secrets in the agent's configuration: a broker password written in
// agent.yaml must not be readable by other users of the device (a local
// user would log in as this device: read its releases, write its status);
// password_file keeps it in a file of its own.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// maxPasswordFile bounds a password file.
const maxPasswordFile = 4096

// checkSecretFile refuses a file holding a secret that group or others can
// read, saying how to fix it.
func checkSecretFile(path, what string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if m := fi.Mode().Perm(); m&0o044 != 0 {
		return fmt.Errorf("%s %s holds the broker password but is readable by other users (mode %04o): any local user could connect as this device; run chmod 600 %s (and chown it to the agent's user): %w",
			what, path, m, path, ErrConfig)
	}
	return nil
}

// checkSecrets runs when a config file is loaded: a password in it needs a
// file only its owner can read; a password_file likewise.
func (c *Config) checkSecrets(path string) error {
	b := c.Broker
	if b == nil {
		return nil
	}
	if b.Password != "" {
		if err := checkSecretFile(path, "agent config"); err != nil {
			return fmt.Errorf("%w (or move the password to a file named by broker.password_file)", err)
		}
	}
	if b.PasswordFile != "" {
		if err := checkSecretFile(b.PasswordFile, "broker.password_file"); err != nil {
			return err
		}
		if _, err := b.password(); err != nil {
			return err
		}
	}
	return nil
}

// checkPasswordFileConfig validates password_file's syntax (Validate).
func (b *BrokerConfig) checkPasswordFileConfig() error {
	if b.PasswordFile == "" {
		return nil
	}
	if b.Password != "" {
		return fmt.Errorf("broker.password and broker.password_file are both set; keep one (password_file)")
	}
	if !filepath.IsAbs(b.PasswordFile) {
		return fmt.Errorf("broker.password_file %q must be an absolute path", b.PasswordFile)
	}
	if b.Username == "" {
		return fmt.Errorf("broker.password_file is set without broker.username")
	}
	return nil
}

// password returns the broker password: broker.password, or the first
// line of broker.password_file (read each time the transport starts, so a
// rotated password is picked up on restart).
func (b *BrokerConfig) password() (string, error) {
	if b.PasswordFile == "" {
		return b.Password, nil
	}
	raw, err := os.ReadFile(b.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("broker.password_file: %w", err)
	}
	if len(raw) > maxPasswordFile {
		return "", fmt.Errorf("broker.password_file %s is %d bytes; a password file holds one line", b.PasswordFile, len(raw))
	}
	line, _, _ := bytes.Cut(raw, []byte("\n"))
	line = bytes.TrimRight(line, "\r")
	if len(line) == 0 {
		return "", fmt.Errorf("broker.password_file %s is empty; write the password on its first line", b.PasswordFile)
	}
	return string(line), nil
}
