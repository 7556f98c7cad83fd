package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestCorruptStateDoesNotBrick(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(t *testing.T, path string)
	}{
		{"garbage file", func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Repeat([]byte("not a database "), 1000), 0o600)
		}},
		{"both meta pages overwritten", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.WriteAt(bytes.Repeat([]byte{0xA5}, 8192), 0)
		}},
		{"truncated to 100 bytes", func(t *testing.T, path string) { os.Truncate(path, 100) }},
		{"record is not JSON", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketApps).Put([]byte("hello"), []byte("{garbage")) })
			db.Close()
		}},
		{"record from a future schema", func(t *testing.T, path string) {
			db, _ := bolt.Open(path, 0o600, nil)
			db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketApps).Put([]byte("hello"), []byte(`{"schema":2,"app":"hello","state":"warp"}`))
			})
			db.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t)
			a := k.open(Options{})
			k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
			a.Close()
			exe := fileSum(t, k.appPath)
			path := k.cfg.StatePath()
			tc.corrupt(t, path)

			_, err := Open(k.cfg, Options{})
			if !errors.Is(err, ErrCorruptState) {
				t.Fatalf("Open of a corrupt state: %v, want ErrCorruptState", err)
			}
			for _, s := range []string{path, "edgefleet-agent reset", "untouched"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if fileSum(t, k.appPath) != exe {
				t.Fatal("the binary changed")
			}
			moved, err := ResetState(k.cfg, time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
			if err != nil {
				t.Fatal(err)
			}
			if moved != path+".corrupt-20261101T120000Z" {
				t.Fatalf("moved to %s", moved)
			}
			if _, err := os.Stat(moved); err != nil {
				t.Fatal(err)
			}
			a = k.open(Options{})
			if st := appStatus(t, a, "hello"); st.State != StateNone {
				t.Fatalf("fresh state: %s", dumpJSON(st))
			}
			// The device works again: a new release installs, .prev keeps the old binary.
			k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
			if v := runVersion(t, k.appPath+".prev"); v != "1.0.0" {
				t.Fatalf(".prev runs %s", v)
			}
			if st := appStatus(t, a, "hello"); st.Previous != "unknown" || st.Version != "1.1.0" {
				t.Fatalf("after reset and install: %s", dumpJSON(st))
			}
		})
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	k := newKit(t)
	k.open(Options{})
	start := time.Now()
	_, err := Open(k.cfg, Options{DBTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "sideload through it") {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	_ = start
	if _, err := ResetState(k.cfg, time.Now()); !errors.Is(err, ErrLocked) {
		t.Fatalf("reset while held: %v, want ErrLocked", err)
	}
}

func TestAgentReset(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	if st := appStatus(t, a, "hello"); st.State != StateNone {
		t.Fatalf("after reset: %s", dumpJSON(st))
	}
	m, _ := filepath.Glob(k.cfg.StatePath() + ".corrupt-*")
	if len(m) != 1 {
		t.Fatalf("moved-aside files: %v", m)
	}
}

func TestBootsOnTrialRollBack(t *testing.T) {
	k := newKit(t) // max_boots_on_trial: 2
	a := k.open(Options{})
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	a.Commit("hello")
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	for boot := 1; boot <= 3; boot++ {
		acts, err := a.Recover(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st := appStatus(t, a, "hello")
		if boot <= 2 {
			if st.State != StateTrial || st.BootsOnTrial != boot {
				t.Fatalf("boot %d: %s", boot, dumpJSON(st))
			}
			continue
		}
		if st.State != StateRolledBack || st.Version != "1.0.0" || !strings.Contains(st.LastError, "did not commit within 2 boots") {
			t.Fatalf("boot 3: %s (actions %+v)", dumpJSON(st), acts)
		}
		if v := runVersion(t, k.appPath); v != "1.0.0" {
			t.Fatalf("app runs %s", v)
		}
	}
	// History stays bounded.
	for i := 0; i < 30; i++ {
		a.Recover(context.Background())
		k.tryInstall(a, k.bundle(spec{Version: "1.1.0", Sequence: 2}))
	}
	if st := appStatus(t, a, "hello"); len(st.History) != maxHistory {
		t.Fatalf("history has %d events, want %d", len(st.History), maxHistory)
	}
}

func TestConfig(t *testing.T) {
	good := "device_id: d\ndata_dir: /var/lib/edgefleet\ntrusted_keys: [/k.pub]\napps:\n  - name: hello\n    path: /opt/hello/bin/hello\n"
	cfg, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	withBroker, err := ParseConfig([]byte(good + "broker: {url: ssl://b:8883, ca: /ca.pem, cert: /c.pem, key: /k.pem}\n"))
	if err != nil || withBroker.Broker.Channel != "stable" {
		t.Fatalf("broker section: %v %+v", err, withBroker)
	}
	h := cfg.Apps[0].Health
	if h.Window.D() != DefaultHealthWindow || h.Timeout.D() != DefaultHealthTimeout || h.MaxBootsOnTrial != 3 || h.MaxRestarts != 3 {
		t.Fatalf("defaults: %+v", h)
	}
	for _, bad := range []struct{ yaml, says string }{
		{good + "colour: blue\n", "colour"},
		{strings.Replace(good, "device_id: d\n", "", 1), "device_id"},
		{strings.Replace(good, "/opt/hello/bin/hello", "hello", 1), "absolute"},
		{strings.Replace(good, "name: hello", "name: Hello World", 1), "valid app name"},
		{good + "  - name: hello\n    path: /x\n", "twice"},
		{strings.Replace(good, "    path:", "    health: {window: soon}\n    path:", 1), "duration"},
		{"", "empty"},
		{good + "broker: {channel: stable}\n", "broker.url"},
		{good + "broker: {url: http://x:80}\n", "scheme"},
		{good + "broker: {url: tcp://x:1883, channel: Not/Valid}\n", "broker.channel"},
		{good + "broker: {url: ssl://x:8883, cert: /c.pem}\n", "go together"},
		{good + "broker: {url: tcp://x:1883, ca: /ca.pem}\n", "use ssl://"},
		{good + "broker: {url: tcp://x:1883, password: p}\n", "without broker.username"},
		{strings.Replace(good, "device_id: d", "device_id: \"pi 17\"", 1) + "broker: {url: tcp://x:1883}\n", "MQTT client id"},
	} {
		_, err := ParseConfig([]byte(bad.yaml))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("config %q: %v, want ErrConfig saying %q", bad.yaml, err, bad.says)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	r := record{Schema: 1, App: "hello", State: StateTrial, Version: "1.0.0", Sequence: 3, Pending: &pending{Version: "1.1.0"}, History: []Event{{Kind: "installed"}}}
	b, _ := json.Marshal(r)
	f.Add(b)
	f.Add([]byte(`{"schema":1,"app":"hello","state":"committed"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"schema":1,"app":"hello","state":"committed","floor":3,"floor":0}`))
	f.Add([]byte(`{"schema":1,"app":"hello","state":"committed","Floor":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord("hello", b)
		if err == nil && (r.App != "hello" || len(r.History) > maxHistory) {
			t.Fatalf("accepted an inconsistent record: %+v", r)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("device_id: d\ndata_dir: /d\ntrusted_keys: [/k]\napps:\n  - name: a\n    path: /a\n    health: {window: 2s}\n"))
	f.Add([]byte("broker: {url: tcp://x:1883}\n"))
	f.Add([]byte("device_id: d\ndata_dir: /d\ntrusted_keys: [/k]\nbroker: {urls: [tcp://a:1883, 'tcp://b:1883']}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(b)
		if err == nil && (cfg.DataDir == "" || len(cfg.TrustedKeys) == 0) {
			t.Fatalf("accepted an incomplete config")
		}
		if err == nil && cfg.Broker != nil && (len(cfg.Broker.Servers()) == 0 || len(cfg.Broker.Servers()) > MaxBrokerURLs) {
			t.Fatalf("accepted a broker section with %d URLs", len(cfg.Broker.Servers()))
		}
	})
}
