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

// verifyBundle runs the full stream verification a device does: the
// signature with kr, every chunk, the payload and decoded executable sizes
// and hashes, the end of the archive, and the expiry.
func verifyBundle(path string, kr *protocol.Keyring, now time.Time) (*protocol.Bundle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := protocol.OpenBundle(bufio.NewReaderSize(f, 64<<10), kr)
	if err != nil {
		return nil, err
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
		return b, err
	}
	if _, err := io.Copy(io.Discard, exe); err != nil {
		return b, err
	}
	return b, b.Manifest.CheckExpiry(now)
}

func runVerify(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var pubs stringsFlag
	fs.Var(&pubs, "pub", "trusted minisign public key file; repeat for several (required)")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet verify --pub KEY [--pub KEY...] BUNDLE...")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if m := missingFlags(fs, "pub"); m != "" {
		return usageError(fs, "%s: the bundles are verified against trusted public keys", m)
	}
	if fs.NArg() == 0 {
		return usageError(fs, "give at least one bundle")
	}
	kr, err := protocol.LoadKeyring(pubs...)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet verify: %v\n", err)
		return 2
	}
	code := 0
	now := time.Now()
	for _, path := range fs.Args() {
		b, err := verifyBundle(path, kr, now)
		if err != nil {
			fmt.Fprintf(env.stdout, "FAIL %s: %v\n", path, err)
			code = 1
			continue
		}
		fmt.Fprintf(env.stdout, "OK   %s: %s, signed by %s\n", path, b.Manifest, protocol.KeyID(b.Key.ID()))
	}
	return code
}

// readManifestUnverified reads manifest.json and its signature from a
// bundle without checking the signature (for display only).
func readManifestUnverified(path string) (raw, sig []byte, m *protocol.Manifest, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReader(f))
	read := func(name string, limit int64) ([]byte, error) {
		hdr, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("%s is not a bundle (%v): %w", path, err, protocol.ErrMalformed)
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
	if raw, err = read(protocol.NameManifest, protocol.MaxManifestSize); err != nil {
		return nil, nil, nil, err
	}
	if sig, err = read(protocol.NameSignature, protocol.MaxSignatureSize); err != nil {
		return nil, nil, nil, err
	}
	m, err = protocol.ParseManifest(raw)
	return raw, sig, m, err
}

type inspectJSON struct {
	File      string             `json:"file"`
	Manifest  json.RawMessage    `json:"manifest"`
	Signature inspectSignature   `json:"signature"`
	Parsed    *protocol.Manifest `json:"-"`
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
	var pubs stringsFlag
	asJSON := fs.Bool("json", false, "print JSON: the manifest as stored and the signature status")
	fs.Var(&pubs, "pub", "trusted public key: verify the whole bundle too; repeat for several")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet inspect [--json] [--pub KEY...] BUNDLE")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		return usageError(fs, "give exactly one bundle (got %d)", fs.NArg())
	}
	path := fs.Arg(0)
	raw, rawSig, m, err := readManifestUnverified(path)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet inspect: %v\n", err)
		return 1
	}
	out := inspectJSON{File: path, Manifest: raw, Parsed: m}
	if s, err := protocol.ParseSignature(rawSig); err == nil {
		out.Signature.KeyID = protocol.KeyID(s.KeyID)
		out.Signature.TrustedComment = s.TrustedComment
	}
	code := 0
	if len(pubs) > 0 {
		kr, err := protocol.LoadKeyring(pubs...)
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet inspect: %v\n", err)
			return 2
		}
		out.Signature.Checked = true
		if _, err := verifyBundle(path, kr, time.Now()); err != nil {
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
	switch {
	case !s.Checked:
		row("verification", "not checked: pass --pub KEY to verify the signature and payload")
	case s.Verified && m.Delta != nil:
		row("verification", "OK: signature, every chunk and the patch hash (the result is checked when applied to its base)")
	case s.Verified:
		row("verification", "OK: signature, every chunk, payload and executable hashes")
	default:
		row("verification", "FAILED: %s", s.Error)
	}
	tw.Flush()
}
