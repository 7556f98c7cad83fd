package agent

// Key sets on real devices (protocol/SPEC.md §8.12): in-process daemons on
// the real embedded broker and on Mosquitto, and sideloaded key sets on an
// Agent. Each test is an attack of docs/THREATS.md.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// roots is an operator's offline root keys for a test.
type roots struct {
	t     testing.TB
	privs []protocol.PrivateKey
	paths []string // public key files
}

func newRoots(t testing.TB, n int) *roots {
	r := &roots{t: t}
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		pub, priv, err := protocol.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pub.MarshalText()
		p := filepath.Join(dir, "root"+string(rune('a'+i))+".pub")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		r.privs, r.paths = append(r.privs, priv), append(r.paths, p)
	}
	return r
}

func pubOf(p protocol.PrivateKey) protocol.PublicKey { return testkit.Public(p) }

// keySetOpts describes a key set to sign.
type keySetOpts struct {
	version  uint64
	roots    []protocol.PrivateKey // the key set's root (threshold 1 unless set)
	thresh   int
	release  []protocol.ReleaseKey
	revoked  []protocol.PublicKey
	target   []protocol.ScopedKey
	issued   time.Time
	lifetime time.Duration
}

// signKeySet makes one signed key set, signed by signers.
func signKeySet(t testing.TB, o keySetOpts, signers ...protocol.PrivateKey) protocol.SignedKeySet {
	t.Helper()
	if o.issued.IsZero() {
		o.issued = time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	}
	if o.lifetime == 0 {
		o.lifetime = 30 * 24 * time.Hour
	}
	if o.thresh == 0 {
		o.thresh = 1
	}
	ks := &protocol.KeySet{Version: o.version, Issued: o.issued, Expires: o.issued.Add(o.lifetime), Release: o.release,
		Root: protocol.RootKeys{Threshold: o.thresh}, Targeting: o.target}
	for _, r := range o.roots {
		ks.Root.Keys = append(ks.Root.Keys, protocol.PublicKeyLine(pubOf(r)))
	}
	for _, k := range o.revoked {
		ks.Revoked = append(ks.Revoked, protocol.KeyID16(k.ID()))
	}
	raw, err := protocol.MarshalKeySet(ks)
	if err != nil {
		t.Fatal(err)
	}
	s := protocol.SignedKeySet{KeySet: raw}
	for _, p := range signers {
		sig, err := protocol.SignKeySet(p, raw)
		if err != nil {
			t.Fatal(err)
		}
		s.Signatures = append(s.Signatures, string(sig))
	}
	return s
}

func chainMsg(t testing.TB, sets ...protocol.SignedKeySet) []byte {
	t.Helper()
	b, err := protocol.MarshalKeySetChain(sets...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func relKey(p protocol.PrivateKey, apps ...string) protocol.ReleaseKey {
	return protocol.ReleaseKey{Key: protocol.PublicKeyLine(pubOf(p)), Apps: apps}
}

// rootConfig turns a device config from trusted_keys to root_keys.
func rootConfig(t testing.TB, cfg *Config, r *roots) *Config {
	cfg.TrustedKeys, cfg.RootKeys, cfg.RootThreshold = nil, r.paths[:1], 0
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func publishKeySet(t testing.TB, c paho.Client, msg []byte) {
	t.Helper()
	if _, err := fleet.PublishKeySet(context.Background(), c, msg, nil, 0, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func publishSigned(t testing.TB, c paho.Client, path string, keys ...protocol.PublicKey) {
	t.Helper()
	if _, err := fleet.PublishBundle(context.Background(), c, path, fleet.PublishOptions{Keyring: protocol.NewKeyring(keys...), Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
}

// keySetScenario: release-key rotation, a revoked key's newer release
// refused, a replayed older key set ignored, and a root rotation walked,
// on a device that has only root_keys, over the broker at url.
func keySetScenario(t *testing.T, url string) {
	k := newKit(t)
	r := newRoots(t, 2)
	_, keyB, _ := protocol.GenerateKey()
	op := operator(t, url)
	view := fleetView(t, op)

	v1 := signKeySet(t, keySetOpts{version: 1, roots: r.privs[:1], release: []protocol.ReleaseKey{relKey(k.priv, "hello")}}, r.privs[0])
	publishKeySet(t, op, chainMsg(t, v1))
	publishSigned(t, op, k.bundle(spec{Version: "1.0.0", Sequence: 1}), k.pub)
	dev := startMQTTDevice(t, rootConfig(t, mqttConfig(t, k, "ks-dev", url), r))
	defer dev.stop()
	eventually(t, "1.0.0 signed by a key of key set 1 installs", func() bool { return installedIs(dev, "1.0.0", "committed") })
	eventually(t, "the status reports key set 1", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "ks-dev" && d.KeySet == 1 {
				return true
			}
		}
		return false
	})

	// Rotate the release key: key set 2 trusts B and revokes A (stolen).
	v2 := signKeySet(t, keySetOpts{version: 2, roots: r.privs[:1], release: []protocol.ReleaseKey{relKey(keyB)}, revoked: []protocol.PublicKey{k.pub}}, r.privs[0])
	publishKeySet(t, op, chainMsg(t, v2))
	eventually(t, "the device takes key set 2", func() bool { return dev.a.Trust().KeySet == 2 })
	if behind := view.KeySetBehind(2); len(behind) > 0 {
		// The status may lag a moment; wait for it rather than fail.
		eventually(t, "the status reports key set 2", func() bool { return len(view.KeySetBehind(2)) == 0 })
	}

	// The thief publishes a newer release signed with the revoked key A.
	publishSigned(t, op, k.bundle(spec{Version: "2.0.0", Sequence: 2, NoProbe: true}), k.pub)
	eventually(t, "the revoked key's release is refused and reported", func() bool {
		return strings.Contains(deviceApp(view, "ks-dev").LastError, "revokes")
	})
	if !installedIs(dev, "1.0.0", "committed") {
		t.Fatal("a release signed by a revoked key was installed")
	}
	// Signed with the new key B: installs.
	publishSigned(t, op, testkit.BundleFile(t, t.TempDir(), spec{Version: "3.0.0", Sequence: 3}, keyB), pubOf(keyB))
	eventually(t, "3.0.0 signed by the rotated-in key installs", func() bool { return installedIs(dev, "3.0.0", "committed") })

	// A replayed older key set (the broker's, or an attacker's) is ignored.
	publishKeySet(t, op, chainMsg(t, v1))
	// Then one the device reports (signed by a stranger): messages on one
	// topic arrive in order, so once its refusal shows, the replay was judged.
	stranger := newRoots(t, 1)
	publishKeySet(t, op, chainMsg(t, signKeySet(t, keySetOpts{version: 9, roots: stranger.privs, release: []protocol.ReleaseKey{relKey(keyB)}}, stranger.privs[0])))
	keySetErr := func(s string) func() bool {
		return func() bool {
			for _, d := range view.Devices() {
				if d.Device == "ks-dev" && strings.Contains(d.KeySetError, s) {
					return true
				}
			}
			return false
		}
	}
	eventually(t, "a key set signed by a stranger is refused and reported", keySetErr("key set version 9 carries valid signatures of 0"))
	if v := dev.a.Trust().KeySet; v != 2 {
		t.Fatalf("a replayed key set 1 moved the device to version %d", v)
	}

	// Root rotation: v3 hands the root to root b (signed by a and b); v4
	// is signed by b alone. The device walks v3 then v4.
	v3 := signKeySet(t, keySetOpts{version: 3, roots: r.privs[1:], release: []protocol.ReleaseKey{relKey(keyB)}, revoked: []protocol.PublicKey{k.pub}}, r.privs[0], r.privs[1])
	v4 := signKeySet(t, keySetOpts{version: 4, roots: r.privs[1:], release: []protocol.ReleaseKey{relKey(keyB)}, revoked: []protocol.PublicKey{k.pub}}, r.privs[1])
	publishKeySet(t, op, chainMsg(t, v4)) // without the rotation: refused
	eventually(t, "v4 without the rotation is refused and reported", keySetErr("key set version 4 carries valid signatures of 0"))
	publishKeySet(t, op, chainMsg(t, v3, v4))
	eventually(t, "the device walks the root rotation to key set 4", func() bool { return dev.a.Trust().KeySet == 4 })
	// The old root alone can no longer sign a key set.
	v5old := signKeySet(t, keySetOpts{version: 5, roots: r.privs[:1], release: []protocol.ReleaseKey{relKey(k.priv)}}, r.privs[0])
	if _, err := dev.a.AcceptKeySet(chainMsg(t, v5old)); !errors.Is(err, protocol.ErrThreshold) {
		t.Fatalf("a key set signed by the retired root: want ErrThreshold, got %v", err)
	}
}

func TestKeySetEmbeddedBroker(t *testing.T) {
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	keySetScenario(t, b.URL())
}

func TestKeySetMosquitto(t *testing.T) {
	keySetScenario(t, startPlainMosquitto(t))
}

// sideloadKit is an Agent with root_keys only.
func sideloadKit(t *testing.T, now func() time.Time) (*kit, *roots, *Agent) {
	k := newKit(t)
	r := newRoots(t, 1)
	k.cfg.TrustedKeys, k.cfg.RootKeys = nil, r.paths
	return k, r, k.open(Options{Now: now})
}

// A device whose clock is a year behind keeps the newest signed time it
// verified and refuses a release that expired by that time, says its
// clock is behind, and keeps the floor across a restart.
func TestKeySetClockYearBehindRefusesExpired(t *testing.T) {
	real := time.Now().UTC().Truncate(time.Second)
	yearAgo := func() time.Time { return real.AddDate(-1, 0, 0) }
	k, r, a := sideloadKit(t, yearAgo)
	// Key set issued (signed) now, valid for the device's wrong clock too.
	msg := chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, issued: real, lifetime: 30 * 24 * time.Hour,
		release: []protocol.ReleaseKey{relKey(k.priv)}}, r.privs[0]))
	if _, err := a.AcceptKeySet(msg); err != nil {
		t.Fatal(err)
	}
	if ti := a.Trust(); !ti.ClockBehind || !ti.TimeFloor.Equal(real) {
		t.Fatalf("trust %+v: want the clock reported behind the floor %s", ti, real)
	}
	exp := real.Add(-24 * time.Hour) // expired yesterday, a year after the device's clock
	err := k.tryInstall(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, Expires: &exp, NoProbe: true}))
	if !errors.Is(err, protocol.ErrExpired) {
		t.Fatalf("an expired release on a device with its clock a year back: want ErrExpired, got %v", err)
	}
	a.Close()
	a2 := k.open(Options{Now: yearAgo})
	if ti := a2.Trust(); ti.KeySet != 1 || !ti.TimeFloor.Equal(real) {
		t.Fatalf("after a restart: %+v, want key set 1 and the floor kept", ti)
	}
	if err := k.tryInstall(a2, k.bundle(spec{Version: "1.0.0", Sequence: 1, Expires: &exp, NoProbe: true})); !errors.Is(err, protocol.ErrExpired) {
		t.Fatalf("after a restart: want ErrExpired, got %v", err)
	}
}

// An expired key set is refused; a held key set that expires stops
// installs (a frozen broker cannot keep a fleet on old keys unnoticed);
// a key scoped to another app cannot sign hello.
func TestKeySetExpiryAndScope(t *testing.T) {
	now := time.Now().UTC()
	clock := &now
	k, r, a := sideloadKit(t, func() time.Time { return *clock })
	old := chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, issued: now.Add(-48 * time.Hour), lifetime: 24 * time.Hour,
		release: []protocol.ReleaseKey{relKey(k.priv)}}, r.privs[0]))
	if _, err := a.AcceptKeySet(old); !errors.Is(err, protocol.ErrExpired) {
		t.Fatalf("an expired key set: want ErrExpired, got %v", err)
	}
	scoped := chainMsg(t, signKeySet(t, keySetOpts{version: 2, roots: r.privs, release: []protocol.ReleaseKey{relKey(k.priv, "other")}}, r.privs[0]))
	if _, err := a.AcceptKeySet(scoped); err != nil {
		t.Fatal(err)
	}
	if err := k.tryInstall(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, NoProbe: true})); !errors.Is(err, protocol.ErrKeyScope) {
		t.Fatalf("a key scoped to app other signing hello: want ErrKeyScope, got %v", err)
	}
	good := chainMsg(t, signKeySet(t, keySetOpts{version: 3, roots: r.privs, lifetime: 48 * time.Hour, release: []protocol.ReleaseKey{relKey(k.priv, "hello")}}, r.privs[0]))
	if _, err := a.AcceptKeySet(good); err != nil {
		t.Fatal(err)
	}
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, NoProbe: true}))
	later := now.Add(72 * time.Hour)
	clock = &later
	err := k.tryInstall(a, k.bundle(spec{Version: "2.0.0", Sequence: 2, NoProbe: true}))
	if !errors.Is(err, protocol.ErrExpired) || !strings.Contains(err.Error(), "key set") {
		t.Fatalf("install under an expired key set: want ErrExpired naming the key set, got %v", err)
	}
}

// A device without root_keys refuses a key set with a message that says
// what to configure; its trusted_keys keep working.
func TestKeySetWithoutRootKeys(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	r := newRoots(t, 1)
	_, err := a.AcceptKeySet(chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, release: []protocol.ReleaseKey{relKey(k.priv)}}, r.privs[0])))
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "root_keys") {
		t.Fatalf("want a config error naming root_keys, got %v", err)
	}
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, NoProbe: true}))
}

// A key set sideloaded through the running daemon's control socket is
// verified like one from the broker; a replay says nothing changed; one
// signed by another root is refused with the reason.
func TestKeySetSideloadThroughDaemon(t *testing.T) {
	k, r, a := sideloadKit(t, nil)
	d, err := NewDaemon(k.cfg, a, DaemonOptions{Logf: t.Logf, StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var c *ControlClient
	eventually(t, "the control socket answers", func() bool {
		c, err = DialControl(ctx, k.cfg.SocketPath())
		return err == nil
	})
	defer c.Close()
	msg := filepath.Join(t.TempDir(), "ks.msg")
	send := func(b []byte) Response {
		os.WriteFile(msg, b, 0o644)
		resp, err := c.Do(ctx, Request{Op: OpKeySet, Bundle: msg}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	v1 := chainMsg(t, signKeySet(t, keySetOpts{version: 1, roots: r.privs, release: []protocol.ReleaseKey{relKey(k.priv)}}, r.privs[0]))
	if resp := send(v1); !resp.OK || !strings.Contains(resp.Message, "version 1 accepted") || a.Trust().KeySet != 1 {
		t.Fatalf("sideload key set 1: %+v (holds %d)", resp, a.Trust().KeySet)
	}
	if resp := send(v1); !resp.OK || !strings.Contains(resp.Message, "already holds key set version 1") {
		t.Fatalf("replay: %+v", resp)
	}
	other := newRoots(t, 1)
	v2 := chainMsg(t, signKeySet(t, keySetOpts{version: 2, roots: other.privs, release: []protocol.ReleaseKey{relKey(k.priv)}}, other.privs[0]))
	if resp := send(v2); resp.OK || !strings.Contains(resp.Error, "root keys the device trusts") {
		t.Fatalf("a key set from another root: %+v", resp)
	}
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, NoProbe: true}))
}
