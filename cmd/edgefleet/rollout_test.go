package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// rolloutBundle writes a signed hello bundle for profile.
func rolloutBundle(t *testing.T, dir string, priv protocol.PrivateKey, version string, seq uint64, profile string) string {
	t.Helper()
	exe := make([]byte, 20_000)
	rand.Read(exe)
	p, _ := protocol.DescribePayload(bytes.NewReader(exe), protocol.EncodingNone, protocol.MinChunkSize)
	m := &protocol.Manifest{Schema: 1, App: "hello", Version: version, Sequence: seq, Created: time.Now().UTC(), Profile: profile,
		Target:  protocol.Target{GOOS: "linux", GOARCH: "amd64", GOAMD64: "v1", ELF: protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}},
		Payload: p, Executable: protocol.Executable{Size: p.Size, SHA256: p.SHA256}}
	raw, sig, err := protocol.SignManifest(m, priv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("hello_%s_%s.efb", version, profile))
	if err := protocol.WriteBundleFile(path, raw, sig, bytes.NewReader(exe), int64(len(exe)), m.Created); err != nil {
		t.Fatal(err)
	}
	return path
}

// retainedTopics lists the broker's retained edgefleet topics except
// device statuses and the driver's presence.
func retainedTopics(t *testing.T, url string) []string {
	t.Helper()
	c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	snap, err := fleet.Snapshot(context.Background(), c, []string{"edgefleet/v1/#"})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for topic, b := range snap {
		if len(b) > 0 && !strings.HasSuffix(topic, "/status") && topic != protocol.DriverTopic {
			out = append(out, topic)
		}
	}
	sort.Strings(out)
	return out
}

func TestRolloutCLI(t *testing.T) {
	dir := t.TempDir()
	pubPath, priv := testkit.Keys(t, dir)
	good := rolloutBundle(t, dir, priv, "1.4.0", 7, "linux-amd64")

	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url := b.URL()
	// Six devices on stable, four in berlin.
	dev, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		site := "berlin"
		if i >= 4 {
			site = "paris"
		}
		id := fmt.Sprintf("pi-%d", i)
		s := &protocol.DeviceStatus{Schema: 1, Device: id, Channel: "stable", Labels: protocol.Labels{"site": site}, Online: true, Time: time.Now().UTC(),
			Apps: []protocol.AppReport{{App: "hello", Version: "1.3.0", Sequence: 6, State: "committed"}}}
		raw, _ := s.Marshal()
		st, _ := protocol.StatusTopic(id)
		dev.Publish(st, 1, true, raw).Wait()
	}
	dev.Disconnect(100)

	// Bad input: each a clear error, nothing published.
	otherKeyPub, otherPriv, _ := protocol.GenerateKey()
	_ = otherKeyPub
	unsigned := rolloutBundle(t, t.TempDir(), otherPriv, "1.4.0", 7, "linux-arm64")
	otherVersion := rolloutBundle(t, dir, priv, "1.4.1", 8, "linux-arm64")
	base := []string{"rollout", "start", "--broker", url, "--pub", pubPath, "--quiet"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"waves that do not grow", []string{"--waves", "5,3,100%", good}, "waves must grow"},
		{"percent over 100", []string{"--waves", "1,150%", good}, "at most 100"},
		{"last wave not 100%", []string{"--waves", "1,50%", good}, "must be 100%"},
		{"empty selection", []string{"--select", "site=tokyo", good}, "no known device matches: selector site=tokyo selects none of the 6 devices on channel stable that run hello (their labels: site=berlin ×4, site=paris ×2)"},
		{"no device on the channel", []string{"--channel", "beta", good}, "no known device follows channel beta"},
		{"threshold out of range", []string{"--max-failures", "150%", good}, "--max-failures"},
		{"min-executed negative", []string{"--min-executed", "-1", good}, "--min-executed -1"},
		{"bad selector", []string{"--select", "site", good}, "want key=value"},
		{"unverified bundle", []string{good, unsigned}, "nothing published"},
		{"mixed releases", []string{good, otherVersion}, "a rollout offers one release"},
	} {
		code, out, errs := runCLI(t, append(append([]string{}, base...), tc.args...)...)
		if code != 1 || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "nothing published") {
			t.Errorf("%s: exit %d, stderr %q, stdout %q; want exit 1 and %q", tc.name, code, errs, out, tc.want)
		}
		if got := retainedTopics(t, url); len(got) != 0 {
			t.Fatalf("%s: the broker holds %v after a refused start", tc.name, got)
		}
	}

	// A good start (no driver online: a warning), on berlin only, with
	// its chunks exported to a mirror directory listed in the candidate.
	mirror := t.TempDir()
	code, out, errs := runCLI(t, append(append([]string{}, base...), "--waves", "1,50%,100%", "--select", "site=berlin",
		"--mirror", mirror, "--mirror-url", "https://cdn.example.com/edgefleet", good)...)
	if code != 0 || !strings.Contains(out, "to 4 selected devices") || !strings.Contains(errs, "no rollout driver is online") {
		t.Fatalf("start: %d\n%s\n%s", code, out, errs)
	}
	objs, _ := filepath.Glob(filepath.Join(mirror, "chunks", "hello", "*", "*"))
	if len(objs) == 0 {
		t.Errorf("rollout start --mirror wrote no chunk objects under %s", mirror)
	}
	if c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url}); err == nil {
		ct, _ := protocol.CandidateTopic("stable", "hello", "linux-amd64")
		snap, _ := fleet.Snapshot(context.Background(), c, []string{ct})
		env, err := protocol.ParseEnvelope(snap[ct])
		if err != nil || len(env.Mirrors) != 1 || env.Mirrors[0] != "https://cdn.example.com/edgefleet" {
			t.Errorf("the candidate does not list the mirror: %+v %v", env, err)
		}
		c.Disconnect(100)
	}
	id := strings.Fields(strings.SplitN(out, "started rollout ", 2)[1])[0]
	id = strings.TrimSuffix(id, ":")
	if !strings.HasPrefix(id, "hello-7-") || !protocol.ValidRolloutID(id) {
		t.Fatalf("rollout id %q", id)
	}
	topics := retainedTopics(t, url)
	if !contains(topics, "edgefleet/v1/rollout/stable/hello") || !contains(topics, "edgefleet/v1/rollout/stable/hello/linux-amd64/manifest") {
		t.Fatalf("after start the broker holds %v", topics)
	}
	// A second start for the same channel and app is refused.
	code, _, errs = runCLI(t, append(append([]string{}, base...), good)...)
	if code != 1 || !strings.Contains(errs, "abort it first with 'edgefleet rollout abort "+id+"'") {
		t.Fatalf("second start: %d %s", code, errs)
	}

	// Status, by id and by channel/app.
	code, out, _ = runCLI(t, "rollout", "status", "--broker", url, "stable/hello")
	if code != 0 || !strings.Contains(out, "rollout "+id) || !strings.Contains(out, "RUNNING") || !strings.Contains(out, "driver: none has run") {
		t.Fatalf("status: %d\n%s", code, out)
	}

	// The broker's driver takes over from here: pause, resume, abort.
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- fleet.RunDriver(ctx, fleet.DriverOptions{Client: b.InternalClient(), Logf: t.Logf, OnReady: func() { close(ready) }})
	}()
	defer func() { cancel(); <-done }()
	<-ready
	for _, step := range []struct{ verb, want string }{{"pause", "is paused"}, {"resume", "is running"}, {"pause", "is paused"}, {"abort", "is aborted"}} {
		code, out, errs := runCLI(t, "rollout", step.verb, "--broker", url, id)
		if code != 0 || !strings.Contains(out, step.want) {
			t.Fatalf("%s: %d\n%s\n%s", step.verb, code, out, errs)
		}
	}
	// The driver stamped the operator's state and kept it.
	time.Sleep(500 * time.Millisecond)
	code, out, _ = runCLI(t, "rollout", "status", "--json", "--broker", url, id)
	if code != 0 || !strings.Contains(out, `"state": "aborted"`) || !strings.Contains(out, `"online": true`) {
		t.Fatalf("status after abort: %s", out)
	}
	if got := retainedTopics(t, url); contains(got, "edgefleet/v1/rollout/stable/hello/linux-amd64/manifest") {
		t.Fatalf("abort left the candidate: %v", got)
	}
	code, _, errs = runCLI(t, "rollout", "resume", "--broker", url, id)
	if code != 1 || !strings.Contains(errs, "aborted already") {
		t.Fatalf("resume of an aborted rollout: %d %s", code, errs)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
