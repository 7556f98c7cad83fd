package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

func TestPassphraseWeakness(t *testing.T) {
	for p, weak := range map[string]bool{
		"hunter2": true, "Password": true, "aaaaaaaaaaaaaaaaaaaa": true, "abcdefghijkl": true,
		"correct horse battery staple": true, "several words make a good passphrase": false, "Tr0ub4dor&3x!": false,
	} {
		if got := passphraseWeakness(p) != ""; got != weak {
			t.Errorf("%q: weak %v, want %v (%s)", p, got, weak, passphraseWeakness(p))
		}
	}
}

// keyset publish puts the chain on the broker retained; status lists the
// devices whose reported key set is older, and a device that refused one.
func TestKeySetPublishAndStatus(t *testing.T) {
	dir := t.TempDir()
	chdir := func(args ...string) []string {
		for i, a := range args {
			if strings.HasSuffix(a, ".json") || strings.HasSuffix(a, ".pub") || strings.HasSuffix(a, ".key") || strings.HasSuffix(a, ".msg") || a == "r" || a == "rel" {
				args[i] = filepath.Join(dir, a)
			}
		}
		return args
	}
	for _, c := range [][]string{
		{"root", "init", "-o", "r", "--unencrypted"},
		{"keygen", "-o", "rel", "--unencrypted"},
		{"keyset", "new", "-o", "ks.json", "--version", "2", "--root", "r/root.pub", "--release", "rel/release.pub"},
		{"keyset", "sign", "--key", "r/root.key", "ks.json"},
		{"keyset", "chain", "-o", "ks.msg", "ks.json"},
	} {
		if code, out, errs := runCLI(t, chdir(c...)...); code != 0 {
			t.Fatalf("%v: %d\n%s%s", c, code, out, errs)
		}
	}
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url := b.URL()
	otherRoot := filepath.Join(dir, "other")
	runCLI(t, "root", "init", "-o", otherRoot, "--unencrypted")
	code, _, errs := runCLI(t, "keyset", "publish", "--broker", url, "--root", filepath.Join(otherRoot, "root.pub"), filepath.Join(dir, "ks.msg"))
	if code != 1 || !strings.Contains(errs, "devices would refuse it") {
		t.Fatalf("publishing a key set the given root did not sign: %d %s", code, errs)
	}
	code, out, errs := runCLI(t, "keyset", "publish", "--broker", url, "--root", filepath.Join(dir, "r/root.pub"), filepath.Join(dir, "ks.msg"))
	if code != 0 || !strings.Contains(out, "published key set version 2") {
		t.Fatalf("keyset publish: %d %s %s", code, out, errs)
	}
	op, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Disconnect(100)
	snap, err := fleet.Snapshot(context.Background(), op, []string{protocol.KeySetTopic})
	if err != nil || fleet.ReadKeySetVersion(snap) != 2 {
		t.Fatalf("the broker holds key set %d (%v), want 2", fleet.ReadKeySetVersion(snap), err)
	}
	floor := time.Now().UTC().Add(time.Hour).Truncate(time.Second)
	for _, s := range []*protocol.DeviceStatus{
		{Schema: 1, Device: "pi-old", KeySet: 1, KeySetError: "key set on edgefleet/v1/keyset refused: expired", Time: time.Now().UTC(), Online: true},
		{Schema: 1, Device: "pi-new", KeySet: 2, ClockBehind: &floor, Time: time.Now().UTC(), Online: true},
	} {
		raw, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		topic, _ := protocol.StatusTopic(s.Device)
		if tok := op.Publish(topic, 1, true, raw); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	code, out, errs = runCLI(t, "status", "--broker", url)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errs)
	}
	for _, want := range []string{"device pi-old holds key set version 1, older than the operator's version 2", "device pi-old: key set on edgefleet/v1/keyset refused: expired",
		"device pi-new: its clock is behind"} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "device pi-new holds") {
		t.Errorf("status lists an up-to-date device as behind:\n%s", out)
	}
}

// publish of a bundle that carries a key set says that devices over MQTT
// do not take it from the bundle (SPEC.md §2).
func TestPublishBundleCarryingKeySetNotes(t *testing.T) {
	dir := t.TempDir()
	pubPath, priv := testkit.Keys(t, dir)
	_, root, _ := protocol.GenerateKey()
	now := time.Now().UTC().Truncate(time.Second)
	raw, err := protocol.MarshalKeySet(&protocol.KeySet{Version: 4, Issued: now.Add(-time.Hour), Expires: now.Add(time.Hour),
		Root:    protocol.RootKeys{Threshold: 1, Keys: []string{protocol.PublicKeyLine(testkit.Public(root))}},
		Release: []protocol.ReleaseKey{{Key: protocol.PublicKeyLine(testkit.Public(priv))}}})
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := protocol.SignKeySet(root, raw)
	msg, _ := protocol.MarshalKeySetChain(protocol.SignedKeySet{KeySet: raw, Signatures: []string{string(sig)}})
	bundle := testkit.BundleFile(t, dir, testkit.Spec{Version: "1.0.0", Sequence: 1, Exe: []byte("not an executable"), NoProbe: true,
		ELF: &protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}, KeySet: msg}, priv)
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	code, out, errs := runCLI(t, "publish", "--broker", b.URL(), "--pub", pubPath, "--quiet", bundle)
	if code != 0 || !strings.Contains(out, "published hello 1.0.0") ||
		!strings.Contains(errs, "carries key set version 4, which devices over MQTT do not take from it: they read key sets on edgefleet/v1/keyset only (edgefleet keyset publish)") {
		t.Fatalf("publish of a bundle carrying a key set: %d\n%s\n%s", code, out, errs)
	}
}
