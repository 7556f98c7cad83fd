package agent

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// A key set inside a sideloaded bundle (protocol/SPEC.md §2): a device
// holding key set 1 installs a bundle signed by a release key only key set
// 2 names, carried in the bundle, and then holds 2 (also after a
// restart); without the entry the same bundle is refused naming the
// unknown key; a replayed older key set is ignored; one signed by a
// stranger is ignored with a warning (the bundle installs when its
// manifest verifies with the keys held, and is refused, saying both why,
// when it does not); a key set that revokes the bundle's own signing key
// is applied and the bundle refused.
func TestBundleKeySetSideload(t *testing.T) {
	k, r, a := sideloadKit(t, nil)
	keyA := k.priv
	_, keyB, _ := protocol.GenerateKey()
	_, keyC, _ := protocol.GenerateKey()
	bundleBy := func(s spec, priv protocol.PrivateKey) string { return testkit.BundleFile(t, k.dir, s, priv) }
	commit := func() {
		t.Helper()
		if err := a.Commit("hello"); err != nil {
			t.Fatal(err)
		}
	}

	v1 := chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, release: []protocol.ReleaseKey{relKey(keyA)}}, r.privs[0]))
	if _, err := a.AcceptKeySet(v1); err != nil {
		t.Fatal(err)
	}
	k.install(a, bundleBy(spec{Version: "1.0.0", Sequence: 1, NoProbe: true}, keyA))
	commit()

	// Key set 2 rotates the release key to B.
	v2 := chainMsg(t, signKeySet(t, keySetOpts{version: 2, roots: r.privs, release: []protocol.ReleaseKey{relKey(keyB)}}, r.privs[0]))
	idB := protocol.KeyID(pubOf(keyB).ID())
	err := k.tryInstall(a, bundleBy(spec{Version: "2.0.0", Sequence: 2, NoProbe: true}, keyB))
	if !errors.Is(err, protocol.ErrUnknownKey) || !strings.Contains(err.Error(), idB) {
		t.Fatalf("signed by B without a key set: want ErrUnknownKey naming %s, got %v", idB, err)
	}
	withV2 := bundleBy(spec{Version: "2.0.0", Sequence: 2, NoProbe: true, KeySet: v2}, keyB)

	// A dry run says what the key set would do and stores nothing.
	f, _ := os.Open(withV2)
	m, note, err := a.CheckKeySet(t0ctx(), f)
	f.Close()
	if err != nil || m.Version != "2.0.0" || !strings.Contains(note, "version 2 would be accepted") {
		t.Fatalf("check of the bundle carrying key set 2: %v %q", err, note)
	}
	if v := a.Trust().KeySet; v != 1 {
		t.Fatalf("a check moved the device to key set %d", v)
	}

	res := k.install(a, withV2)
	if res.Version != "2.0.0" || res.KeySet != "key set version 2 from the bundle accepted (was 1)" {
		t.Fatalf("install with key set 2: %+v", res)
	}
	if v := a.Trust().KeySet; v != 2 {
		t.Fatalf("after the install the device holds key set %d, want 2", v)
	}
	commit()
	a.Close()
	a = k.open(Options{})
	if v := a.Trust().KeySet; v != 2 {
		t.Fatalf("after a restart the device holds key set %d, want 2 (trust.json)", v)
	}

	// Key set 1 replayed in a newer bundle signed by B: ignored, installs.
	res = k.install(a, bundleBy(spec{Version: "3.0.0", Sequence: 3, NoProbe: true, KeySet: v1}, keyB))
	if res.KeySet != "" || a.Trust().KeySet != 2 {
		t.Fatalf("replayed key set 1: note %q, holds %d", res.KeySet, a.Trust().KeySet)
	}
	commit()
	// And key set 1 with A's bundle: A is no longer trusted.
	if err := k.tryInstall(a, bundleBy(spec{Version: "3.1.0", Sequence: 4, NoProbe: true, KeySet: v1}, keyA)); !errors.Is(err, protocol.ErrUnknownKey) {
		t.Fatalf("A's bundle carrying the old key set 1: want ErrUnknownKey, got %v", err)
	}

	// A key set signed by a stranger, naming C: ignored with a warning.
	stranger := newRoots(t, 1)
	bogus := chainMsg(t, signKeySet(t, keySetOpts{version: 9, roots: stranger.privs, release: []protocol.ReleaseKey{relKey(keyC)}}, stranger.privs[0]))
	res = k.install(a, bundleBy(spec{Version: "4.0.0", Sequence: 5, NoProbe: true, KeySet: bogus}, keyB))
	if !strings.Contains(res.KeySet, "ignored") || !strings.Contains(res.KeySet, "valid signatures of 0 of the root keys the device trusts") {
		t.Fatalf("a stranger's key set: note %q", res.KeySet)
	}
	if ti := a.Trust(); ti.KeySet != 2 || !strings.Contains(ti.Error, "key set in a bundle ignored") {
		t.Fatalf("after a stranger's key set: %+v", ti)
	}
	commit()
	idC := protocol.KeyID(pubOf(keyC).ID())
	err = k.tryInstall(a, bundleBy(spec{Version: "5.0.0", Sequence: 6, NoProbe: true, KeySet: bogus}, keyC))
	if !errors.Is(err, protocol.ErrUnknownKey) || !strings.Contains(err.Error(), "key set it carries was ignored") || !strings.Contains(err.Error(), idC) {
		t.Fatalf("signed by C, which only the stranger's key set names: want ErrUnknownKey naming %s and the ignored key set, got %v", idC, err)
	}

	// Key set 3 revokes B and trusts C; B's bundle carrying it is refused,
	// the key set kept.
	v3 := chainMsg(t, signKeySet(t, keySetOpts{version: 3, roots: r.privs, release: []protocol.ReleaseKey{relKey(keyC)}, revoked: []protocol.PublicKey{pubOf(keyB)}}, r.privs[0]))
	err = k.tryInstall(a, bundleBy(spec{Version: "6.0.0", Sequence: 7, NoProbe: true, KeySet: v3}, keyB))
	if !errors.Is(err, protocol.ErrRevokedKey) {
		t.Fatalf("a key set revoking the bundle's own signer: want ErrRevokedKey, got %v", err)
	}
	if ti := a.Trust(); ti.KeySet != 3 || ti.Error != "" {
		t.Fatalf("after key set 3 from a refused bundle: %+v (want 3, the warning cleared)", ti)
	}
	if st := appStatus(t, a, "hello"); st.Version != "4.0.0" {
		t.Fatalf("running %s, want 4.0.0", st.Version)
	}
	k.install(a, bundleBy(spec{Version: "6.0.0", Sequence: 7, NoProbe: true}, keyC))
}

// A device without root_keys installs a bundle carrying a key set as
// before (trusted_keys) and says it ignored the key set.
func TestBundleKeySetWithoutRootKeys(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	r := newRoots(t, 1)
	msg := chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, release: []protocol.ReleaseKey{relKey(k.priv)}}, r.privs[0]))
	res := k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, NoProbe: true, KeySet: msg}))
	if !strings.Contains(res.KeySet, "no root_keys") || a.Trust().KeySet != 0 {
		t.Fatalf("note %q, holds %d", res.KeySet, a.Trust().KeySet)
	}
}
