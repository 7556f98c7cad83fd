package main

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/packer"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("verify", command{summary: "verify bundles completely: signature, payload chunks, executable hash, expiry", run: runVerify})
	register("inspect", command{summary: "show a bundle's manifest (and verify it with --pub)", run: runInspect})
}

// trustFlags are the keys a verification on the operator's host trusts:
// release keys (--pub, a device's trusted_keys) and roots (--root, a
// device's root_keys), which judge a key set the bundle carries as a
// freshly provisioned device would.
type trustFlags struct {
	pubs, roots stringsFlag
	threshold   int
	pubKeys     []protocol.PublicKey
	rootKeys    []protocol.PublicKey
}

func (tf *trustFlags) register(fs *flag.FlagSet, pubHelp string) {
	fs.Var(&tf.pubs, "pub", pubHelp)
	fs.Var(&tf.roots, "root", "root public key file (a device's root_keys; repeatable): the key set a bundle carries is verified against it, and its release keys are trusted too, as on a device provisioned with these roots")
	fs.IntVar(&tf.threshold, "threshold", 1, "with --root: the devices' root_threshold")
}

func (tf *trustFlags) given() bool { return len(tf.pubs) > 0 || len(tf.roots) > 0 }

func (tf *trustFlags) load() error {
	kr, err := protocol.LoadKeyring(tf.pubs...)
	if err != nil && len(tf.pubs) > 0 {
		return err
	}
	if kr != nil {
		tf.pubKeys = kr.Keys()
	}
	if tf.rootKeys, err = loadRoots(tf.roots); err != nil {
		return err
	}
	return nil
}

// keySetInfo is what inspect and verify say about a bundle's keyset.json.
type keySetInfo struct {
	Version   uint64   `json:"version"`
	KeySets   int      `json:"keysets"`
	Bytes     int      `json:"bytes"`
	Roots     []string `json:"roots"`
	Threshold int      `json:"threshold"`
	// Checked is false when no --root was given.
	Checked  bool   `json:"checked"`
	Verified bool   `json:"verified"`
	Error    string `json:"error,omitempty"`
}

// describeKeySet parses a key set message for display (nil: none or not
// parseable, then Error says why).
func describeKeySet(raw []byte) *keySetInfo {
	if raw == nil {
		return nil
	}
	ki := &keySetInfo{Bytes: len(raw)}
	_, docs, err := protocol.ParseKeySetChain(raw)
	if err != nil {
		ki.Error = err.Error()
		return ki
	}
	ks := docs[len(docs)-1]
	ki.Version, ki.KeySets, ki.Threshold = ks.Version, len(docs), ks.Root.Threshold
	roots, _ := ks.RootOf()
	for _, k := range roots {
		ki.Roots = append(ki.Roots, protocol.KeyID(k.ID()))
	}
	return ki
}

// verifyBundle runs the full stream verification a device does: a key set
// the bundle carries judged against the roots (as a freshly provisioned
// device: TrustState.Advance), the signature with the release keys plus
// those of the key set accepted, every chunk, the payload and decoded
// executable sizes and hashes, the end of the archive, and the expiry.
func verifyBundle(path string, tf *trustFlags, now time.Time) (*protocol.Bundle, *keySetInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var ki *keySetInfo
	clock := func() time.Time { return now }
	b, err := protocol.OpenBundleWith(bufio.NewReaderSize(f, 64<<10), protocol.OpenOptions{
		Keyring: protocol.NewKeyring(tf.pubKeys...),
		KeySet: func(raw []byte) *protocol.Keyring {
			ki = describeKeySet(raw)
			if len(tf.rootKeys) == 0 || ki.Version == 0 {
				return nil
			}
			ki.Checked = true
			c, docs, _ := protocol.ParseKeySetChain(raw)
			st, err := protocol.TrustState{Roots: tf.rootKeys, Threshold: tf.threshold}.Advance(c, docs, now)
			if err != nil {
				ki.Error = err.Error()
				return nil
			}
			ki.Verified = true
			return protocol.PolicyKeyring(st.Held, tf.pubKeys, clock)
		},
	})
	if err != nil {
		return nil, ki, err
	}
	var exe io.Reader
	if b.Manifest.IsDelta() {
		// A delta's payload is a patch: every chunk is checked here; the
		// result is checked against the executable hash where it is
		// applied (a device, or the packer's own round trip).
		exe, err = b.Payload()
	} else {
		exe, err = b.Executable()
	}
	if err != nil {
		return b, ki, err
	}
	if _, err := io.Copy(io.Discard, exe); err != nil {
		return b, ki, err
	}
	return b, ki, b.Manifest.CheckExpiry(now)
}

// keySetSentence is one line about a bundle's key set ("" none).
func keySetSentence(ki *keySetInfo) string {
	switch {
	case ki == nil:
		return ""
	case ki.Version == 0:
		return "carries a key set that does not parse (devices ignore it): " + ki.Error
	case !ki.Checked:
		return fmt.Sprintf("carries key set version %d (roots %s, threshold %d), not checked: pass --root ROOT.pub to verify it", ki.Version, strings.Join(ki.Roots, ", "), ki.Threshold)
	case ki.Verified:
		return fmt.Sprintf("carries key set version %d (roots %s, threshold %d), verified against the given roots", ki.Version, strings.Join(ki.Roots, ", "), ki.Threshold)
	default:
		return fmt.Sprintf("carries key set version %d, which devices with the given roots ignore: %s", ki.Version, ki.Error)
	}
}

func runVerify(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var tf trustFlags
	tf.register(fs, "trusted minisign public key file; repeat for several (this or --root is required)")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet verify --pub KEY [--pub KEY...] [--root ROOT.pub...] BUNDLE...")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if !tf.given() {
		return usageError(fs, "missing --pub (required): the bundles are verified against trusted public keys (for devices with root_keys, give --root ROOT.pub instead or as well)")
	}
	if fs.NArg() == 0 {
		return usageError(fs, "give at least one bundle")
	}
	if err := tf.load(); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet verify: %v\n", err)
		return 2
	}
	code := 0
	now := time.Now()
	for _, path := range fs.Args() {
		b, ki, err := verifyBundle(path, &tf, now)
		ks := keySetSentence(ki)
		if ks != "" {
			ks = "; " + ks
		}
		if err != nil {
			fmt.Fprintf(env.stdout, "FAIL %s: %v%s\n", path, err, ks)
			code = 1
			continue
		}
		fmt.Fprintf(env.stdout, "OK   %s: %s, signed by %s%s\n", path, b.Manifest, protocol.KeyID(b.Key.ID()), ks)
	}
	return code
}

// readManifestUnverified reads manifest.json and its signature from a
// bundle without checking the signature (for display only).
func readManifestUnverified(path string) (raw, sig []byte, m *protocol.Manifest, err error) {
	raw, sig, _, m, err = readBundleUnverified(path)
	return raw, sig, m, err
}

// readBundleUnverified is readManifestUnverified that also returns the
// keyset.json entry (nil: none).
func readBundleUnverified(path string) (raw, sig, keyset []byte, m *protocol.Manifest, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReader(f))
	var pending *tar.Header
	read := func(name string, limit int64) ([]byte, error) {
		hdr := pending
		pending = nil
		if hdr == nil {
			var err error
			if hdr, err = tr.Next(); err != nil {
				return nil, fmt.Errorf("%s is not a bundle (%v): %w", path, err, protocol.ErrMalformed)
			}
		}
		if name == protocol.NameKeySet && hdr.Name != name {
			pending = hdr // no key set: this is the manifest
			return nil, nil
		}
		if hdr.Name != name || hdr.Size > limit {
			return nil, fmt.Errorf("%s: entry %q where %s must be: %w", path, hdr.Name, name, protocol.ErrMalformed)
		}
		b := make([]byte, hdr.Size)
		if _, err := io.ReadFull(tr, b); err != nil {
			return nil, fmt.Errorf("%s ends inside %s: %w", path, name, protocol.ErrTruncated)
		}
		return b, nil
	}
	if keyset, err = read(protocol.NameKeySet, protocol.MaxKeySetMessage); err != nil {
		return nil, nil, nil, nil, err
	}
	if raw, err = read(protocol.NameManifest, protocol.MaxManifestSize); err != nil {
		return nil, nil, nil, nil, err
	}
	if sig, err = read(protocol.NameSignature, protocol.MaxSignatureSize); err != nil {
		return nil, nil, nil, nil, err
	}
	m, err = protocol.ParseManifest(raw)
	return raw, sig, keyset, m, err
}

type inspectJSON struct {
	File      string           `json:"file"`
	Manifest  json.RawMessage  `json:"manifest"`
	Signature inspectSignature `json:"signature"`
	// KeySet is the keyset.json entry the bundle carries (absent: none).
	KeySet *keySetInfo        `json:"keyset,omitempty"`
	Parsed *protocol.Manifest `json:"-"`
}

type inspectSignature struct {
	KeyID          string `json:"key_id"`
	TrustedComment string `json:"trusted_comment"`
	// Checked is false when no --pub was given.
	Checked  bool   `json:"checked"`
	Verified bool   `json:"verified"`
	Error    string `json:"error,omitempty"`
}

func runInspect(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var tf trustFlags
	asJSON := fs.Bool("json", false, "print JSON: the manifest as stored and the signature status")
	tf.register(fs, "trusted public key: verify the whole bundle too; repeat for several")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet inspect [--json] [--pub KEY...] [--root ROOT.pub...] BUNDLE")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		return usageError(fs, "give exactly one bundle (got %d)", fs.NArg())
	}
	path := fs.Arg(0)
	raw, rawSig, rawKS, m, err := readBundleUnverified(path)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet inspect: %v\n", err)
		return 1
	}
	out := inspectJSON{File: path, Manifest: raw, Parsed: m, KeySet: describeKeySet(rawKS)}
	if s, err := protocol.ParseSignature(rawSig); err == nil {
		out.Signature.KeyID = protocol.KeyID(s.KeyID)
		out.Signature.TrustedComment = s.TrustedComment
	}
	code := 0
	if tf.given() {
		if err := tf.load(); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet inspect: %v\n", err)
			return 2
		}
		out.Signature.Checked = true
		_, ki, err := verifyBundle(path, &tf, time.Now())
		if ki != nil {
			out.KeySet = ki
		}
		if err != nil {
			out.Signature.Error = err.Error()
			code = 1
		} else {
			out.Signature.Verified = true
		}
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return code
	}
	printManifest(env.stdout, out)
	return code
}

func printManifest(w io.Writer, in inspectJSON) {
	m := in.Parsed
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	row("bundle", "%s", in.File)
	row("app", "%s %s (sequence %d)", m.App, m.Version, m.Sequence)
	row("profile", "%s", m.Profile)
	t := m.Target.GOOS + "/" + m.Target.GOARCH
	for _, kv := range [][2]string{{"GOARM", m.Target.GOARM}, {"GOAMD64", m.Target.GOAMD64}, {"GOMIPS", m.Target.GOMIPS}} {
		if kv[1] != "" {
			t += " " + kv[0] + "=" + kv[1]
		}
	}
	row("target", "%s, ELF%d %s %s-endian", t, m.Target.ELF.Class, m.Target.ELF.Machine, m.Target.ELF.Endian)
	if m.Created.Unix() == 0 {
		row("created", "reproducible: no timestamp (set SOURCE_DATE_EPOCH or --timestamp to record one)")
	} else {
		row("created", "%s", m.Created.UTC().Format(time.RFC3339))
	}
	if m.Expires != nil {
		row("expires", "%s", m.Expires.UTC().Format(time.RFC3339))
	} else {
		row("expires", "never")
	}
	b := m.Build
	build := b.GoVersion
	if b.Package != "" {
		build += " " + b.Package
	}
	if b.Module != "" {
		build += " (module " + b.Module + ")"
	}
	if b.Revision != "" {
		build += " revision " + b.Revision
		if b.Modified {
			build += " (modified)"
		}
	}
	row("build", "%s", build)
	row("upx", "%s", yesNo(m.UPX))
	p := m.Payload
	enc := p.Encoding
	if p.Encoding == protocol.EncodingXZ {
		enc += " (dictionary " + hardware.Size(p.XZDictSize).String() + ")"
	}
	row("payload", "%s, %s (%d bytes), %d chunks of %s", enc, hardware.Size(p.Size), p.Size, len(p.Chunks), hardware.Size(p.ChunkSize))
	row("payload sha256", "%s", p.SHA256)
	if d := m.Delta; d != nil {
		row("delta", "%s from %s (%d bytes, sha256 %s); applies only to that executable", d.Format, orUnknownVersion(d.BaseVersion), d.BaseSize, d.BaseSHA256)
		row("full release", "payload sha256 %s", d.FullPayloadSHA256)
	}
	row("executable", "%s (%d bytes)", hardware.Size(m.Executable.Size), m.Executable.Size)
	row("executable sha256", "%s", m.Executable.SHA256)
	if m.Probe != nil {
		row("probe", "%s within %s", packer.DescribeProbe(m.Probe, m.Version), time.Duration(m.Probe.Timeout))
	} else {
		row("probe", "none")
	}
	row("min free storage", "%s", hardware.Size(m.MinFreeStorage))
	s := in.Signature
	row("signed by", "key %s (%q)", s.KeyID, s.TrustedComment)
	if ks := keySetSentence(in.KeySet); ks != "" {
		row("key set", "%s", ks)
	}
	switch {
	case !s.Checked:
		row("verification", "not checked: pass --pub KEY (or --root ROOT.pub) to verify the signature and payload")
	case s.Verified && m.Delta != nil:
		row("verification", "OK: signature, every chunk and the patch hash (the result is checked when applied to its base)")
	case s.Verified:
		row("verification", "OK: signature, every chunk, payload and executable hashes")
	default:
		row("verification", "FAILED: %s", s.Error)
	}
	tw.Flush()
}
