package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// keySetMsg signs a key set of version v (root: root; release: rel;
// revoked: revoke) with signer and returns the chain message.
func keySetMsg(t *testing.T, v uint64, root, signer protocol.PrivateKey, rel []protocol.PrivateKey, revoke ...protocol.PrivateKey) []byte {
	t.Helper()
	now := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	ks := &protocol.KeySet{Version: v, Issued: now, Expires: now.Add(30 * 24 * time.Hour),
		Root: protocol.RootKeys{Threshold: 1, Keys: []string{protocol.PublicKeyLine(testkit.Public(root))}}}
	for _, r := range rel {
		ks.Release = append(ks.Release, protocol.ReleaseKey{Key: protocol.PublicKeyLine(testkit.Public(r))})
	}
	for _, r := range revoke {
		ks.Revoked = append(ks.Revoked, protocol.KeyID16(r.ID()))
	}
	raw, err := protocol.MarshalKeySet(ks)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := protocol.SignKeySet(signer, raw)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := protocol.MarshalKeySetChain(protocol.SignedKeySet{KeySet: raw, Signatures: []string{string(sig)}})
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// A real daemon, provisioned with a root only, sideloads through its
// control socket bundles that carry key sets (protocol/SPEC.md §2): a
// bundle signed by a rotated-in release key installs once it carries the
// key set naming it, and the daemon then holds that key set; a stranger's
// key set is ignored with a warning in the answer and the status; a key
// set revoking the bundle's own signer is kept and the bundle refused.
func TestBundleKeySetThroughDaemon(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	_, root, _ := protocol.GenerateKey()
	rootPub := filepath.Join(d.dir, "root.pub")
	pt, _ := testkit.Public(root).MarshalText()
	os.WriteFile(rootPub, pt, 0o644)
	testkit.WriteAgentConfig(t, d.cfgPath, testkit.AgentConfig{DataDir: d.data, RootKeys: []string{rootPub},
		Apps: []testkit.AgentApp{{Name: "hello", Path: d.hello, Args: []string{"--serve"}, Window: "1s", MaxRestarts: 2, MaxBootsOnTrial: 2}}})
	keyA := d.priv
	_, keyB, _ := protocol.GenerateKey()
	write := func(name string, b []byte) string {
		p := filepath.Join(d.dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bundle := func(version string, seq uint64, priv protocol.PrivateKey, keyset []byte) string {
		b := testkit.Bundle(t, testkit.Spec{App: "hello", Version: version, Sequence: seq, Binary: helloBin(t, version, ""),
			Encoding: protocol.EncodingNone, ChunkSize: 256 << 10, KeySet: keyset}, priv)
		return write(fmt.Sprintf("hello-%s-%d-%d.efb", version, seq, len(keyset)), b)
	}
	v1 := keySetMsg(t, 1, root, root, []protocol.PrivateKey{keyA})
	v2 := keySetMsg(t, 2, root, root, []protocol.PrivateKey{keyB})
	d.mustRun(0, "keyset", "--config", d.cfgPath, write("v1.msg", v1))
	d.startDaemon(d.cli)

	idB := protocol.KeyID(keyB.ID())
	out := d.mustRun(1, "sideload", "--config", d.cfgPath, bundle("1.0.0", 1, keyB, nil))
	if !strings.Contains(out, "refused: verify bundle: the manifest is signed by key "+idB) {
		t.Fatalf("signed by B without a key set:\n%s", out)
	}
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, bundle("1.0.0", 1, keyB, v2))
	for _, want := range []string{"key set: key set version 2 from the bundle accepted (was 1)", "installed hello 1.0.0 (sequence 1, previous none); trial: committed"} {
		if !strings.Contains(out, want) {
			t.Fatalf("sideload output lacks %q:\n%s", want, out)
		}
	}
	if st, _ := d.status(); st.Trust == nil || st.Trust.KeySet != 2 {
		t.Fatalf("the daemon's status after the bundle's key set 2: %+v", st.Trust)
	}

	_, stranger, _ := protocol.GenerateKey()
	bogus := keySetMsg(t, 7, stranger, stranger, []protocol.PrivateKey{keyB})
	out = d.mustRun(0, "sideload", "--config", d.cfgPath, bundle("2.0.0", 2, keyB, bogus))
	if !strings.Contains(out, "key set: the key set in the bundle was ignored (the device keeps key set version 2): key set version 7 carries valid signatures of 0 of the root keys the device trusts") ||
		!strings.Contains(out, "installed hello 2.0.0") {
		t.Fatalf("a stranger's key set in a good bundle:\n%s", out)
	}
	out = d.mustRun(0, "status", "--config", d.cfgPath)
	if !strings.Contains(out, "key set version 2, expires") || !strings.Contains(out, "warning: key set in a bundle ignored: key set version 7") {
		t.Fatalf("status after a stranger's key set:\n%s", out)
	}

	v3 := keySetMsg(t, 3, root, root, []protocol.PrivateKey{keyA}, keyB)
	out = d.mustRun(1, "sideload", "--config", d.cfgPath, bundle("3.0.0", 3, keyB, v3))
	if !strings.Contains(out, "refused: verify bundle: the manifest is signed by key "+idB+", which key set version 3 revokes") {
		t.Fatalf("a key set revoking the bundle's signer:\n%s", out)
	}
	st := d.waitStatus("key set 3 held, 2.0.0 running", func(st agent.DaemonStatus) bool {
		return st.Trust != nil && st.Trust.KeySet == 3 && runningVersion(st, "hello", "2.0.0")
	})
	if st.Trust.Error != "" {
		t.Fatalf("the warning stays after key set 3 was accepted: %q", st.Trust.Error)
	}
}
