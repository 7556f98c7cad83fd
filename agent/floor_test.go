package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// readFloorFile reads k's floor.json as the agent would (0 when missing).
func readFloorFile(t *testing.T, k *kit) uint64 {
	t.Helper()
	b, err := os.ReadFile(k.cfg.FloorPath())
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseFloor(b)
	if err != nil {
		t.Fatalf("floor.json: %v\n%s", err, b)
	}
	return d.Apps["hello"].Sequence
}

func corruptStateDB(t *testing.T, k *kit) {
	t.Helper()
	if err := os.WriteFile(k.cfg.StatePath(), bytes.Repeat([]byte("not a bbolt file "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The replay attack the floor file stops: install sequence 5, corrupt
// state.db, reset, then offer an older validly signed release.
func TestFloorSurvivesReset(t *testing.T) {
	k := newKit(t)
	v5 := k.bundle(spec{Version: "1.0.0", Sequence: 5})
	old := k.bundle(spec{Version: "1.1.0", Sequence: 3})
	a := k.open(Options{})
	k.install(a, v5)
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	if got := readFloorFile(t, k); got != 5 {
		t.Fatalf("floor.json says %d after installing sequence 5", got)
	}
	a.Close()

	corruptStateDB(t, k)
	if _, err := Open(k.cfg, Options{}); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("Open of a corrupt state.db: %v", err)
	}
	if _, err := ResetState(k.cfg, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := readFloorFile(t, k); got != 5 {
		t.Fatalf("reset changed floor.json: %d", got)
	}
	a = k.open(Options{})
	before := fileSum(t, k.appPath)
	f, err := os.Open(old)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Check(context.Background(), f)
	f.Close()
	if !errors.Is(err, ErrOldSequence) {
		t.Fatalf("check of the replayed sequence 3 after a reset: %v, want ErrOldSequence", err)
	}
	err = k.tryInstall(a, old)
	if !errors.Is(err, ErrOldSequence) || !Fatal(err) {
		t.Fatalf("replayed sequence 3 after a reset: %v, want ErrOldSequence", err)
	}
	for _, s := range []string{"sequence 3", "hello 1.0.0 (sequence 5)", "floor is 5", k.cfg.FloorPath(), "above 5"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("refusal does not say %q: %v", s, err)
		}
	}
	t.Logf("refusal: %v", err)
	if fileSum(t, k.appPath) != before {
		t.Fatal("the refused replay changed the binary")
	}

	// The in-process reset (the daemon's) keeps it too.
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := k.tryInstall(a, old); !errors.Is(err, ErrOldSequence) {
		t.Fatalf("replay after Agent.Reset: %v", err)
	}
	// A newer release installs as usual.
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 6}))
	if got := readFloorFile(t, k); got != 6 {
		t.Fatalf("floor.json says %d after installing sequence 6", got)
	}
}

// A rolled-back sequence stays in the floor file: after a reset it is
// still refused.
func TestFloorKeepsRolledBackSequence(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	a.Commit("hello")
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if err := a.Rollback("hello", "failed its trial"); err != nil {
		t.Fatal(err)
	}
	if got := readFloorFile(t, k); got != 2 {
		t.Fatalf("floor.json says %d after rolling sequence 2 back", got)
	}
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	err := k.tryInstall(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	if !errors.Is(err, ErrOldSequence) {
		t.Fatalf("rolled-back sequence 2 after a reset: %v", err)
	}
}

// A corrupt floor file does not brick: Open works, the app keeps its
// binary, installs are refused (not fatal) with the file's name and what
// to do, reset leaves the file alone, and moving it aside rebuilds it
// from the state database.
func TestCorruptFloorFile(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	a.Commit("hello")
	a.Close()
	garbage := []byte(`{"schema":1,"apps":{"hello":{"sequence":"lots"}}}`)
	if err := os.WriteFile(k.cfg.FloorPath(), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	a = k.open(Options{})
	before := fileSum(t, k.appPath)
	next := k.bundle(spec{Version: "1.1.0", Sequence: 2})
	err := k.tryInstall(a, next)
	if !errors.Is(err, ErrCorruptFloor) || Fatal(err) {
		t.Fatalf("install with a corrupt floor file: %v (fatal %v), want a transient ErrCorruptFloor", err, Fatal(err))
	}
	for _, s := range []string{k.cfg.FloorPath(), "move the file aside", "restore it from a backup"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("refusal does not say %q: %v", s, err)
		}
	}
	if fileSum(t, k.appPath) != before {
		t.Fatal("the binary changed")
	}
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(k.cfg.FloorPath()); !bytes.Equal(b, garbage) {
		t.Fatalf("reset touched the floor file: %q", b)
	}
	a.Close()

	// Moved aside with an intact state database: rebuilt at the next start.
	k2 := newKit(t)
	a = k2.open(Options{})
	k2.install(a, k2.bundle(spec{Version: "1.0.0", Sequence: 4}))
	a.Commit("hello")
	a.Close()
	if err := os.Rename(k2.cfg.FloorPath(), k2.cfg.FloorPath()+".bad"); err != nil {
		t.Fatal(err)
	}
	a = k2.open(Options{})
	if got := readFloorFile(t, k2); got != 4 {
		t.Fatalf("floor.json rebuilt from the state database says %d, want 4", got)
	}
	k2.install(a, k2.bundle(spec{Version: "1.1.0", Sequence: 5}))
}

// TestFloorCrashOrder kills a real install at every failpoint of the
// install path and checks the ordering promise: whenever the new binary
// is at the target or the database records it, floor.json already has its
// sequence; after recovery an undone install has the floor back where it
// was (the release installs again), a finished one keeps it.
func TestFloorCrashOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: crash tests run real processes; not in -short")
	}
	for _, fp := range Failpoints {
		if strings.HasPrefix(fp, "commit-") || strings.HasPrefix(fp, "rollback-") {
			continue
		}
		t.Run(fp, func(t *testing.T) {
			k := newKit(t)
			a := k.open(Options{})
			k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
			a.Commit("hello")
			a.Close()
			next := k.bundle(spec{Version: "1.1.0", Sequence: 2})
			ps, out := runTestAgent(t, k, fp, "install", next)
			if !killedBySIGKILL(ps) {
				t.Fatalf("failpoint %s did not fire (%v): %s", fp, ps, out)
			}
			floor := readFloorFile(t, k)
			r := rawRecord(t, k)
			if v := runVersion(t, k.appPath); v == "1.1.0" && floor < 2 {
				t.Fatalf("the new binary is at the target but floor.json says %d", floor)
			}
			if max(r.Floor, r.Sequence) > floor {
				t.Fatalf("state.db floor %d/sequence %d is ahead of floor.json %d", r.Floor, r.Sequence, floor)
			}
			t.Logf("%s: target %s, db %s, floor.json %d", fp, runVersion(t, k.appPath), r.State, floor)

			a = k.open(Options{})
			if _, err := a.Recover(context.Background()); err != nil {
				t.Fatal(err)
			}
			st := assertConsistent(t, k, a)
			floor = readFloorFile(t, k)
			switch {
			case st.State == StateTrial && st.Version == "1.1.0":
				if floor != 2 {
					t.Fatalf("finished swap: floor.json says %d", floor)
				}
			case st.State == StateCommitted && st.Version == "1.0.0":
				if floor != 1 {
					t.Fatalf("undone install: floor.json says %d, want it back at 1", floor)
				}
				k.install(a, next) // not condemned by the interrupted attempt
			default:
				t.Fatalf("after recovery: %s", dumpJSON(st))
			}
			// Whatever happened, a reset does not reopen the door.
			a.Close()
			corruptStateDB(t, k)
			if _, err := ResetState(k.cfg, time.Now()); err != nil {
				t.Fatal(err)
			}
			a = k.open(Options{})
			if err := k.tryInstall(a, next); !errors.Is(err, ErrOldSequence) {
				t.Fatalf("replay of sequence 2 after reset: %v", err)
			}
		})
	}
}

// rawRecord reads hello's record straight from state.db (no Open, so no
// recovery or floor seeding).
func rawRecord(t *testing.T, k *kit) record {
	t.Helper()
	db, err := bolt.Open(k.cfg.StatePath(), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var r record
	err = db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketApps).Get([]byte("hello"))
		if v == nil {
			return errors.New("no record for hello")
		}
		return json.Unmarshal(v, &r)
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestParseFloorStrict(t *testing.T) {
	good := `{"schema":1,"apps":{"hello":{"sequence":5,"version":"1.0.0"}}}`
	if d, err := parseFloor([]byte(good)); err != nil || d.Apps["hello"].Sequence != 5 {
		t.Fatalf("good floor file: %v", err)
	}
	for name, b := range map[string]string{
		"empty":          ``,
		"not JSON":       `floor 5`,
		"future schema":  `{"schema":2,"apps":{}}`,
		"no apps":        `{"schema":1}`,
		"unknown field":  `{"schema":1,"apps":{},"extra":true}`,
		"unknown in app": `{"schema":1,"apps":{"hello":{"sequence":5,"by":"me"}}}`,
		"trailing data":  good + `{}`,
		"bad app name":   `{"schema":1,"apps":{"../x":{"sequence":5}}}`,
		"sequence 0":     `{"schema":1,"apps":{"hello":{"sequence":0}}}`,
		"negative":       `{"schema":1,"apps":{"hello":{"sequence":-1}}}`,
		"too large":      `{"schema":1,"apps":{}}` + strings.Repeat(" ", maxFloorFile),
		"duplicate key":  `{"schema":1,"apps":{"hello":{"sequence":5,"sequence":1}}}`,
		"case variant":   `{"schema":1,"apps":{"hello":{"Sequence":5}}}`,
		"duplicate app":  `{"schema":1,"apps":{"hello":{"sequence":5},"hello":{"sequence":1}}}`,
	} {
		if _, err := parseFloor([]byte(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseFloor(f *testing.F) {
	f.Add([]byte(`{"schema":1,"apps":{"hello":{"sequence":5,"version":"1.0.0"}}}`))
	f.Add([]byte(`{"schema":1,"apps":{}}`))
	f.Add([]byte(`{"schema":2,"apps":{"a":{"sequence":1}}}`))
	f.Add([]byte(`{"schema":1,"apps":{"hello":{"sequence":5,"sequence":1}}}`))
	f.Add([]byte(`{"schema":1,"apps":{"hello":{"sequence":5,"Sequence":1}}}`))
	f.Add([]byte(`{"schema":1,"apps":{"hello":{"sequence":5,"version":"` + strings.Repeat("é", 101) + `…"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseFloor(b)
		if err != nil {
			return
		}
		d2, err := parseFloor(d.marshal())
		if err != nil {
			t.Fatalf("a parsed floor file does not parse again: %v", err)
		}
		if len(d2.repaired) != 0 {
			t.Fatalf("the agent would write a floor file it must repair again: %v", d2.repaired)
		}
		if len(d2.Apps) != len(d.Apps) {
			t.Fatalf("round trip changed the apps: %v → %v", d.Apps, d2.Apps)
		}
		for app, e := range d.Apps {
			if d2.Apps[app] != e {
				t.Fatalf("round trip changed %s: %v → %v", app, e, d2.Apps[app])
			}
		}
	})
}

// oldFloorVersion is what agents before the version limit wrote into
// floor.json for a 201+ byte version: its first 200 bytes and "…", 203
// bytes, which they then refused to read.
func oldFloorVersion(v string) string { return v[:200] + "…" }

// writeOldFloor writes floor.json as an agent before the limit did.
func writeOldFloor(t *testing.T, path string, seq uint64, version string) {
	t.Helper()
	b, err := json.MarshalIndent(map[string]any{"schema": 1, "apps": map[string]any{"hello": map[string]any{"sequence": seq, "version": version}}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A device that installed a 201-byte version before the limit holds it in
// its state record and a 203-byte text in floor.json, which it then
// refused to read: every later install failed, and moving floor.json
// aside rebuilt it with the same text. Now the agent reads it, repairs it
// when it opens (keeping the sequence), and the rebuild writes a text it
// can read.
func TestFloorOverlongVersionRecovers(t *testing.T) {
	long := "1.0.0-" + strings.Repeat("x", 250)
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 4}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	// What the old agent left after installing `long` as sequence 4.
	setRecordVersion(t, a, "hello", long)
	a.Close()
	writeOldFloor(t, k.cfg.FloorPath(), 4, oldFloorVersion(long))

	var logs strings.Builder
	a = k.open(Options{Logf: func(f string, v ...any) { fmt.Fprintf(&logs, f+"\n", v...) }})
	b, err := os.ReadFile(k.cfg.FloorPath())
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseFloor(b)
	if err != nil || len(d.repaired) != 0 {
		t.Fatalf("floor.json after Open: %v, repaired %v\n%s", err, d.repaired, b)
	}
	if e := d.Apps["hello"]; e.Sequence != 4 || len(e.Version) > maxFloorVersion || !strings.HasPrefix(e.Version, "1.0.0-xxx") {
		t.Fatalf("floor after the repair: %+v", e)
	}
	if !strings.Contains(logs.String(), "over-long version text for hello") {
		t.Errorf("the repair is not logged:\n%s", logs.String())
	}
	// The floor still holds: sequence 4 again is refused, 5 installs.
	if err := k.tryInstall(a, k.bundle(spec{Version: "1.0.1", Sequence: 4})); !errors.Is(err, ErrOldSequence) {
		t.Fatalf("sequence 4 after the repair: %v, want ErrOldSequence", err)
	}
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 5}))
	if got := readFloorFile(t, k); got != 5 {
		t.Fatalf("floor.json says %d after installing sequence 5", got)
	}
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	a.Close()

	// The documented rebuild (move floor.json aside) from a record with
	// an over-long version writes a file the agent reads.
	writeOldFloor(t, k.cfg.FloorPath(), 5, oldFloorVersion(long))
	a = k.open(Options{})
	if err := k.tryInstall(a, k.bundle(spec{Version: "1.1.1", Sequence: 5})); !errors.Is(err, ErrOldSequence) {
		t.Fatalf("sequence 5 with an old floor file: %v, want ErrOldSequence", err)
	}
	k.install(a, k.bundle(spec{Version: "1.2.0", Sequence: 6}))
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := os.Remove(k.cfg.FloorPath()); err != nil {
		t.Fatal(err)
	}
	a = k.open(Options{})
	setRecordVersion(t, a, "hello", long)
	a.Close()
	os.Remove(k.cfg.FloorPath())
	a = k.open(Options{}) // rebuilds floor.json from the record
	if got := readFloorFile(t, k); got != 6 {
		t.Fatalf("rebuilt floor.json says %d, want 6", got)
	}
	k.install(a, k.bundle(spec{Version: "1.3.0", Sequence: 7}))
}

// floor.json is read strictly: a key twice or in another case could let
// an edited file lower the floor in a way one reader sees and another
// does not.
func TestFloorRefusesAmbiguousKeys(t *testing.T) {
	for name, body := range map[string]string{
		"duplicate sequence":    `{"schema":1,"apps":{"hello":{"sequence":9,"sequence":1}}}`,
		"case-variant sequence": `{"schema":1,"apps":{"hello":{"sequence":9,"Sequence":1}}}`,
		"duplicate app":         `{"schema":1,"apps":{"hello":{"sequence":9},"hello":{"sequence":1}}}`,
		"case-variant apps":     `{"schema":1,"Apps":{"hello":{"sequence":1}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			k := newKit(t)
			a := k.open(Options{})
			if err := os.WriteFile(k.cfg.FloorPath(), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			err := k.tryInstall(a, k.bundle(spec{Version: "1.0.0", Sequence: 2}))
			if !errors.Is(err, ErrCorruptFloor) {
				t.Fatalf("install with floor.json %s: %v, want ErrCorruptFloor", body, err)
			}
		})
	}
}

// State records in bbolt refuse a key twice or in another case (they
// tolerate unknown keys, which a newer agent may add).
func TestStateRecordRefusesAmbiguousKeys(t *testing.T) {
	good := `{"schema":1,"app":"hello","state":"committed","version":"1.0.0","sequence":3,"floor":3}`
	if _, err := decodeRecord("hello", []byte(good)); err != nil {
		t.Fatal(err)
	}
	if _, err := decodeRecord("hello", []byte(strings.Replace(good, `"floor":3`, `"floor":3,"added_later":{"x":1}`, 1))); err != nil {
		t.Fatalf("a record with a field from a newer agent: %v", err)
	}
	for _, bad := range []string{
		strings.Replace(good, `"floor":3`, `"floor":3,"floor":0`, 1),
		strings.Replace(good, `"floor":3`, `"floor":3,"Floor":0`, 1),
		strings.Replace(good, `"state":"committed"`, `"State":"committed"`, 1),
	} {
		if _, err := decodeRecord("hello", []byte(bad)); err == nil {
			t.Errorf("record accepted: %s", bad)
		}
	}
}

// setRecordVersion writes version into app's state record as it is (what
// an older agent stored, which the current writers would clip).
func setRecordVersion(t *testing.T, a *Agent, app, version string) {
	t.Helper()
	err := a.withDB(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			r, err := getRecord(tx, app)
			if err != nil {
				return err
			}
			r.Version = version
			b, _ := json.Marshal(r)
			return tx.Bucket(bucketApps).Put([]byte(app), b)
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}
