package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgefleet/edgefleet/protocol"
	"golang.org/x/term"
)

// Key file names written by keygen.
const (
	secretKeyName = "release.key"
	publicKeyName = "release.pub"
)

func init() {
	register("keygen", command{summary: "make a release signing key pair (minisign format)", run: runKeygen})
}

func runKeygen(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	out := fs.String("o", "", "directory for release.key and release.pub (required)")
	unencrypted := fs.Bool("unencrypted", false, "write the secret key without a passphrase (CI and tests only)")
	force := fs.Bool("force", false, "overwrite existing key files")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet keygen -o DIR [--unencrypted] [--force]")
		fmt.Fprintln(env.stderr, "\nWrites DIR/release.key (encrypted with a passphrase from $EDGEFLEET_PASSPHRASE\nor asked twice on the terminal) and DIR/release.pub.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if m := missingFlags(fs, "o"); m != "" {
		return usageError(fs, "%s: the directory for release.key and release.pub", m)
	}
	if fs.NArg() != 0 {
		return usageError(fs, "takes no arguments (got %s)", strings.Join(fs.Args(), " "))
	}
	keyPath, pubPath := filepath.Join(*out, secretKeyName), filepath.Join(*out, publicKeyName)
	if !*force {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Stat(p); err == nil {
				fmt.Fprintf(env.stderr, "edgefleet keygen: %s exists; refusing to overwrite a key (pass --force if you really mean it)\n", p)
				return 1
			}
		}
	}
	pass := ""
	if !*unencrypted {
		var err error
		pass, err = newPassphrase(env)
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet keygen: %v\n", err)
			return 1
		}
		warnWeakPassphrase(env, pass) // passphrase.go
	}
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet keygen: %v\n", err)
		return 1
	}
	secret, err := protocol.MarshalPrivateKey(priv, pass)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet keygen: %v\n", err)
		return 1
	}
	pubText, _ := pub.MarshalText()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet keygen: %v\n", err)
		return 1
	}
	if err := writeFileAtomic(keyPath, append(secret, '\n'), 0o600); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet keygen: %v\n", err)
		return 1
	}
	if err := writeFileAtomic(pubPath, append(pubText, '\n'), 0o644); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet keygen: %v\n", err)
		return 1
	}
	state := "encrypted with your passphrase"
	if *unencrypted {
		state = "NOT encrypted: keep it out of reach"
	}
	fmt.Fprintf(env.stdout, "key id %s\nsecret key: %s (%s)\npublic key: %s (give this to devices and to `edgefleet verify --pub`)\n",
		protocol.KeyID(pub.ID()), keyPath, state, pubPath)
	return 0
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return protocol.WriteFileAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// passphraseEnv names the variable that carries the key passphrase for
// scripts and CI.
const passphraseEnv = "EDGEFLEET_PASSPHRASE"

// terminal returns the file descriptor of stdin when it is a terminal.
func terminal(env *cliEnv) (int, bool) {
	f, ok := env.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}

func readPassphrase(env *cliEnv, prompt string) (string, error) {
	fd, ok := terminal(env)
	if !ok {
		return "", fmt.Errorf("no passphrase: set %s or run on a terminal", passphraseEnv)
	}
	fmt.Fprint(env.stderr, prompt)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(env.stderr)
	if err != nil {
		return "", fmt.Errorf("reading the passphrase: %w", err)
	}
	return string(b), nil
}

// newPassphrase asks for a new passphrase twice, or takes it from the
// environment.
func newPassphrase(env *cliEnv) (string, error) {
	if p := env.getenv(passphraseEnv); p != "" {
		return p, nil
	}
	p1, err := readPassphrase(env, "passphrase for the new key: ")
	if err != nil {
		return "", err
	}
	if p1 == "" {
		return "", errors.New("empty passphrase: give one, or pass --unencrypted for a CI or test key")
	}
	p2, err := readPassphrase(env, "the same passphrase again: ")
	if err != nil {
		return "", err
	}
	if p1 != p2 {
		return "", errors.New("the two passphrases differ; nothing was written")
	}
	return p1, nil
}

// loadSecretKey reads a minisign secret key, asking for its passphrase
// when it is encrypted.
func loadSecretKey(env *cliEnv, path string) (protocol.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return protocol.PrivateKey{}, fmt.Errorf("secret key: %w", err)
	}
	pass := ""
	if protocol.IsEncryptedKey(b) {
		pass = env.getenv(passphraseEnv)
		if pass == "" {
			if pass, err = readPassphrase(env, "passphrase for "+path+": "); err != nil {
				return protocol.PrivateKey{}, fmt.Errorf("%s is encrypted: %w", path, err)
			}
		}
	}
	k, err := protocol.ParsePrivateKey(b, pass)
	if err != nil {
		return protocol.PrivateKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}
