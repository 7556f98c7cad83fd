package main

// The offline root of trust (protocol/SPEC.md §8.12):
//
//	edgefleet root init -o DIR              root key pair (DIR/root.key, root.pub)
//	edgefleet keyset new -o keyset.json …   write an unsigned key set
//	edgefleet keyset sign --key root.key keyset.json
//	                                        add one root's signature (keyset.json.<KEYID>.minisig)
//	edgefleet keyset chain -o keyset.msg keyset-v3.json keyset-v4.json
//	                                        the message devices read
//	edgefleet keyset verify --root root.pub keyset.msg
//	edgefleet keyset publish --broker URL keyset.msg
//	edgefleet pack --keyset keyset.msg …     or carry it in every bundle
//
// A root rotation is a key set whose --root names the new root(s), signed
// by the old root(s) and the new ones; publish a chain holding it and every
// later key set so that devices walk it.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("root", command{summary: "the offline root of trust: `root init` makes a root key pair", run: runRoot})
	register("keyset", command{summary: "key sets signed by the root: new, sign, chain, verify, publish", run: runKeySet})
}

func runRoot(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 0 || args[0] != "init" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			args = []string{"init", "-h"}
		} else {
			fmt.Fprintln(env.stderr, "usage: edgefleet root init -o DIR [--unencrypted] [--force]\n\nWrites DIR/root.key (encrypted; keep it offline) and DIR/root.pub (put it in\nthe devices' root_keys). Make several for a threshold.")
			return 2
		}
	}
	fs := flag.NewFlagSet("root init", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	out := fs.String("o", "", "directory for root.key and root.pub (required)")
	unencrypted := fs.Bool("unencrypted", false, "write the secret key without a passphrase (CI and tests only)")
	force := fs.Bool("force", false, "overwrite existing key files")
	if err := parseFlags(fs, args[1:]); err != nil {
		return 2
	}
	if *out == "" || fs.NArg() != 0 {
		fmt.Fprintln(env.stderr, "usage: edgefleet root init -o DIR [--unencrypted] [--force]")
		return 2
	}
	keyPath, pubPath := filepath.Join(*out, "root.key"), filepath.Join(*out, "root.pub")
	id, state, err := writeKeyPair(env, keyPath, pubPath, *unencrypted, *force)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet root init: %v\n", err)
		return 1
	}
	fmt.Fprintf(env.stdout, "root key id %s\nsecret key: %s (%s; keep it offline: it signs key sets only)\npublic key: %s (list it under root_keys: in the devices' agent.yaml)\n",
		id, keyPath, state, pubPath)
	return 0
}

// writeKeyPair generates and writes a minisign key pair (keygen's rules:
// no overwrite without force, encrypted unless unencrypted, a weak
// passphrase warned about).
func writeKeyPair(env *cliEnv, keyPath, pubPath string, unencrypted, force bool) (id, state string, err error) {
	if !force {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Stat(p); err == nil {
				return "", "", fmt.Errorf("%s exists; refusing to overwrite a key (pass --force if you really mean it)", p)
			}
		}
	}
	pass := ""
	if !unencrypted {
		if pass, err = newPassphrase(env); err != nil {
			return "", "", err
		}
		warnWeakPassphrase(env, pass)
	}
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		return "", "", err
	}
	secret, err := protocol.MarshalPrivateKey(priv, pass)
	if err != nil {
		return "", "", err
	}
	pubText, _ := pub.MarshalText()
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o755); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(keyPath, append(secret, '\n'), 0o600); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(pubPath, append(pubText, '\n'), 0o644); err != nil {
		return "", "", err
	}
	state = "encrypted with your passphrase"
	if unencrypted {
		state = "NOT encrypted: keep it out of reach"
	}
	return protocol.KeyID(pub.ID()), state, nil
}

func runKeySet(ctx context.Context, env *cliEnv, args []string) int {
	usage := func() int {
		fmt.Fprintln(env.stderr, `usage:
  edgefleet keyset new -o FILE --version N --root PUB [--root PUB ...] [--threshold N]
        --release PUB[:apps=a,b][:profiles=p,q][:until=RFC3339] ... [--revoke PUB|KEYID ...]
        [--targeting PUB[:channels=c,d] ...] [--expires 8760h]
  edgefleet keyset sign --key ROOT.key FILE
  edgefleet keyset chain -o MSG FILE [FILE ...]     (in increasing version)
  edgefleet keyset verify --root PUB [--root PUB ...] [--threshold N] MSG
  edgefleet keyset publish --broker URL [--root PUB ...] MSG`)
		return 2
	}
	if len(args) == 0 {
		return usage()
	}
	var code int
	switch args[0] {
	case "new":
		code = keySetNew(env, args[1:])
	case "sign":
		code = keySetSign(env, args[1:])
	case "chain":
		code = keySetChain(env, args[1:])
	case "verify":
		code = keySetVerify(env, args[1:])
	case "publish":
		code = keySetPublish(ctx, env, args[1:])
	default:
		return usage()
	}
	if code == 2 {
		return usage()
	}
	return code
}

func readPub(path string) (protocol.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return protocol.PublicKey{}, err
	}
	k, err := protocol.ParsePublicKey(b)
	if err != nil {
		return k, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// parseKeySpec reads PUB[:name=v,w]...; the allowed option names are opts.
func parseKeySpec(spec string, opts ...string) (protocol.PublicKey, map[string]string, error) {
	parts := strings.Split(spec, ":")
	k, err := readPub(parts[0])
	if err != nil {
		return k, nil, err
	}
	m := map[string]string{}
	for _, p := range parts[1:] {
		name, val, ok := strings.Cut(p, "=")
		if !ok || !hasName(opts, name) {
			return k, nil, fmt.Errorf("%q: after the key file, give %s=..., separated by ':'", spec, strings.Join(opts, "=, "))
		}
		m[name] = val
	}
	return k, m, nil
}

func hasName(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func keySetNew(env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("keyset new", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	out := fs.String("o", "", "key set file to write (required)")
	version := fs.Uint64("version", 0, "key set version; higher than every earlier one (required)")
	threshold := fs.Int("threshold", 1, "how many of the --root keys must sign the next key set")
	expires := fs.Duration("expires", 365*24*time.Hour, "lifetime: devices refuse releases once it passes without a newer key set")
	var roots, releases, revokes, targeting stringsFlag
	fs.Var(&roots, "root", "root public key file (repeatable): who signs the next key set")
	fs.Var(&releases, "release", "release public key file, optionally :apps=a,b:profiles=p:until=RFC3339 (repeatable)")
	fs.Var(&revokes, "revoke", "public key file or key id never to trust again (repeatable)")
	fs.Var(&targeting, "targeting", "targeting public key file, optionally :channels=a,b (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if *out == "" || *version == 0 || len(roots) == 0 || fs.NArg() != 0 {
		fmt.Fprintln(env.stderr, "edgefleet keyset new: -o, --version and at least one --root are required")
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(env.stderr, "edgefleet keyset new: %v\n", err)
		return 1
	}
	now := time.Now().UTC().Truncate(time.Second)
	ks := &protocol.KeySet{Version: *version, Issued: now, Expires: now.Add(*expires), Root: protocol.RootKeys{Threshold: *threshold}}
	for _, r := range roots {
		k, err := readPub(r)
		if err != nil {
			return fail(err)
		}
		ks.Root.Keys = append(ks.Root.Keys, protocol.PublicKeyLine(k))
	}
	for _, r := range releases {
		k, o, err := parseKeySpec(r, "apps", "profiles", "until")
		if err != nil {
			return fail(err)
		}
		rk := protocol.ReleaseKey{Key: protocol.PublicKeyLine(k), Apps: splitList(o["apps"]), Profiles: splitList(o["profiles"])}
		if u := o["until"]; u != "" {
			t, err := time.Parse(time.RFC3339, u)
			if err != nil {
				return fail(fmt.Errorf("--release %s: until: %v", r, err))
			}
			rk.NotAfter = &t
		}
		ks.Release = append(ks.Release, rk)
	}
	for _, r := range targeting {
		k, o, err := parseKeySpec(r, "channels")
		if err != nil {
			return fail(err)
		}
		ks.Targeting = append(ks.Targeting, protocol.ScopedKey{Key: protocol.PublicKeyLine(k), Channels: splitList(o["channels"])})
	}
	for _, r := range revokes {
		if k, err := readPub(r); err == nil {
			ks.Revoked = append(ks.Revoked, protocol.KeyID16(k.ID()))
			continue
		}
		var id uint64
		if _, err := fmt.Sscanf(strings.ToUpper(r), "%X", &id); err != nil || id == 0 {
			return fail(fmt.Errorf("--revoke %q is neither a readable public key file nor a key id", r))
		}
		ks.Revoked = append(ks.Revoked, protocol.KeyID16(id))
	}
	b, err := protocol.MarshalKeySet(ks)
	if err != nil {
		return fail(err)
	}
	if err := writeFileAtomic(*out, b, 0o644); err != nil {
		return fail(err)
	}
	fmt.Fprintf(env.stdout, "key set version %d: %d release keys, %d revoked, root %d of %d, expires %s\nwritten to %s; now sign it with each root: edgefleet keyset sign --key root.key %s\n",
		ks.Version, len(ks.Release), len(ks.Revoked), ks.Root.Threshold, len(ks.Root.Keys), ks.Expires.Format(time.RFC3339), *out, *out)
	return 0
}

func keySetSign(env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("keyset sign", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	key := fs.String("key", "", "a root secret key (required)")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if m := missingFlags(fs, "key"); m != "" {
		return usageError(fs, "%s", m)
	}
	if fs.NArg() != 1 {
		return usageError(fs, "give the key set file to sign (one)")
	}
	fail := func(err error) int {
		fmt.Fprintf(env.stderr, "edgefleet keyset sign: %v\n", err)
		return 1
	}
	path := fs.Arg(0)
	raw, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	priv, err := loadSecretKey(env, *key)
	if err != nil {
		return fail(err)
	}
	sig, err := protocol.SignKeySet(priv, raw)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", path, err))
	}
	out := fmt.Sprintf("%s.%s.minisig", path, protocol.KeyID16(priv.ID()))
	if err := writeFileAtomic(out, sig, 0o644); err != nil {
		return fail(err)
	}
	fmt.Fprintf(env.stdout, "signed %s with root key %s: %s\n(check it with the stock tool: minisign -Vm %s -x %s -p ROOT.pub)\n", path, protocol.KeyID(priv.ID()), out, path, out)
	return 0
}

// chainOf reads key set files and their signatures (FILE.*.minisig).
func chainOf(files []string) ([]byte, error) {
	var sets []protocol.SignedKeySet
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		sigFiles, _ := filepath.Glob(f + ".*.minisig")
		sort.Strings(sigFiles)
		if len(sigFiles) == 0 {
			return nil, fmt.Errorf("%s has no signatures (%s.<KEYID>.minisig); sign it first with edgefleet keyset sign", f, f)
		}
		s := protocol.SignedKeySet{KeySet: raw}
		for _, sf := range sigFiles {
			b, err := os.ReadFile(sf)
			if err != nil {
				return nil, err
			}
			s.Signatures = append(s.Signatures, string(b))
		}
		sets = append(sets, s)
	}
	return protocol.MarshalKeySetChain(sets...)
}

func keySetChain(env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("keyset chain", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	out := fs.String("o", "", "message file to write (required)")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if m := missingFlags(fs, "o"); m != "" {
		return usageError(fs, "%s", m)
	}
	if fs.NArg() == 0 {
		return usageError(fs, "give the signed key set files, in increasing version")
	}
	msg, err := chainOf(fs.Args())
	if err == nil {
		err = writeFileAtomic(*out, msg, 0o644)
	}
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet keyset chain: %v\n", err)
		return 1
	}
	fmt.Fprintf(env.stdout, "%s: %d key sets, %d bytes; check it with edgefleet keyset verify --root ROOT.pub %s, then publish it (edgefleet keyset publish), sideload it (edgefleet-agent keyset) or put it in bundles (edgefleet pack --keyset %s)\n", *out, fs.NArg(), len(msg), *out, *out)
	return 0
}

func loadRoots(paths []string) ([]protocol.PublicKey, error) {
	var ks []protocol.PublicKey
	for _, p := range paths {
		k, err := readPub(p)
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	return ks, nil
}

func keySetVerify(env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("keyset verify", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var roots stringsFlag
	fs.Var(&roots, "root", "root public key file a device is provisioned with (repeatable, required)")
	threshold := fs.Int("threshold", 1, "the devices' root_threshold")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if m := missingFlags(fs, "root"); m != "" {
		return usageError(fs, "%s", m)
	}
	if fs.NArg() != 1 {
		return usageError(fs, "give the key set message to verify (one, made by edgefleet keyset chain)")
	}
	fail := func(err error) int {
		fmt.Fprintf(env.stderr, "edgefleet keyset verify: %v\n", err)
		return 1
	}
	rk, err := loadRoots(roots)
	if err != nil {
		return fail(err)
	}
	b, err := protocol.ReadKeySetFile(fs.Arg(0))
	if err != nil {
		return fail(err)
	}
	c, docs, err := protocol.ParseKeySetChain(b)
	if err != nil {
		return fail(err)
	}
	st, err := protocol.TrustState{Roots: rk, Threshold: *threshold}.Advance(c, docs, time.Now())
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(env.stdout, "ok: a device provisioned with these roots accepts key set version %d (expires %s)\n", st.Version(), st.Held.Expires.Format(time.RFC3339))
	return 0
}

func keySetPublish(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("keyset publish", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	var roots stringsFlag
	fs.Var(&roots, "root", "root public key file to check the message against before publishing (repeatable)")
	threshold := fs.Int("threshold", 1, "the devices' root_threshold (with --root)")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		return usageError(fs, "give the key set message to publish (one, made by edgefleet keyset chain)")
	}
	fail := func(err error) int {
		fmt.Fprintf(env.stderr, "edgefleet keyset publish: %v\n", err)
		return 1
	}
	rk, err := loadRoots(roots)
	if err != nil {
		return fail(err)
	}
	b, err := protocol.ReadKeySetFile(fs.Arg(0))
	if err != nil {
		return fail(err)
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		return fail(err)
	}
	defer c.Disconnect(250)
	v, err := fleet.PublishKeySet(ctx, c, b, rk, *threshold, time.Now())
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(env.stdout, "published key set version %d on %s (retained); `edgefleet status` lists devices still behind it\n", v, protocol.KeySetTopic)
	return 0
}

// targetingOptions loads the --targeting-key of publish and assign (nil
// without one).
func targetingOptions(env *cliEnv, keyPath string, life time.Duration) (*fleet.TargetingOptions, error) {
	if keyPath == "" {
		return nil, nil
	}
	k, err := loadSecretKey(env, keyPath)
	if err != nil {
		return nil, fmt.Errorf("--targeting-key: %w", err)
	}
	return &fleet.TargetingOptions{Key: k, Lifetime: life}, nil
}
