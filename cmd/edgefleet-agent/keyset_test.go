package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// edgefleet-agent keyset without a daemon: accepted, then "already
// holds"; a device without root_keys says what to configure.
func TestKeySetCommandDirect(t *testing.T) {
	dir := t.TempDir()
	rootPub, rootPriv, _ := protocol.GenerateKey()
	relPub, _, _ := protocol.GenerateKey()
	pt, _ := rootPub.MarshalText()
	os.WriteFile(filepath.Join(dir, "root.pub"), pt, 0o644)
	rt, _ := relPub.MarshalText()
	os.WriteFile(filepath.Join(dir, "rel.pub"), rt, 0o644)
	now := time.Now().UTC().Truncate(time.Second)
	raw, err := protocol.MarshalKeySet(&protocol.KeySet{Version: 3, Issued: now, Expires: now.Add(time.Hour),
		Root: protocol.RootKeys{Threshold: 1, Keys: []string{protocol.PublicKeyLine(rootPub)}}, Release: []protocol.ReleaseKey{{Key: protocol.PublicKeyLine(relPub)}}})
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := protocol.SignKeySet(rootPriv, raw)
	msg, _ := protocol.MarshalKeySetChain(protocol.SignedKeySet{KeySet: raw, Signatures: []string{string(sig)}})
	os.WriteFile(filepath.Join(dir, "ks.msg"), msg, 0o644)
	cfg := func(keys string) string {
		p := filepath.Join(dir, "agent.yaml")
		os.WriteFile(p, []byte("device_id: pi-1\ndata_dir: "+filepath.Join(dir, "data")+"\n"+keys+"apps: []\n"), 0o600)
		return p
	}
	out, errs, code := runIn("keyset", "--config", cfg("trusted_keys: ["+filepath.Join(dir, "rel.pub")+"]\n"), filepath.Join(dir, "ks.msg"))
	if code != 1 || !strings.Contains(out, "no root_keys") {
		t.Fatalf("without root_keys: %d %q %q", code, out, errs)
	}
	c := cfg("root_keys: [" + filepath.Join(dir, "root.pub") + "]\n")
	if out, errs, code := runIn("keyset", "--config", c, filepath.Join(dir, "ks.msg")); code != 0 || !strings.Contains(out, "key set version 3 accepted (was 0)") {
		t.Fatalf("keyset: %d %q %q", code, out, errs)
	}
	if out, _, code := runIn("keyset", "--config", c, filepath.Join(dir, "ks.msg")); code != 0 || !strings.Contains(out, "already holds key set version 3") {
		t.Fatalf("keyset again: %d %q", code, out)
	}
	if out, _, code := runIn("status", "--config", c); code != 0 || !strings.Contains(out, "key set version 3, expires") {
		t.Fatalf("status does not show the key set held: %d %q", code, out)
	}
}
