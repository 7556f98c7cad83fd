package fleet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// received subscribes c to each filter in turn, then to a marker topic it
// publishes a nonce on, and returns the topics that arrived for each
// filter before the marker: a broker sends a subscription's retained
// messages before it acknowledges the next one, so what has not arrived
// by then was refused. Except one kind: the embedded broker sends the
// retained message of an exact chunk topic subscribed at QoS 0 from its
// own goroutine after the SUBACK (broker_chunks.go), so it may come after
// the marker; for such a filter that the SUBACK granted, received waits
// for it (a refused one is refused by its SUBACK, and never queued).
func received(t *testing.T, c paho.Client, marker string, filters ...string) map[string][]string {
	t.Helper()
	// paho hands a message to every matching handler: one filter at a
	// time, so that what an allowed filter brings is not counted for a
	// refused one.
	if len(filters) > 1 {
		all := map[string][]string{}
		for _, f := range filters {
			for k, v := range received(t, c, marker, f) {
				all[k] = v
			}
		}
		return all
	}
	ctx := context.Background()
	var mu sync.Mutex
	got := map[string][]string{}
	var awaitChunk []string
	for _, f := range filters {
		f := f
		tok := c.Subscribe(f, 0, func(_ paho.Client, m paho.Message) {
			mu.Lock()
			got[f] = append(got[f], m.Topic())
			mu.Unlock()
		})
		err := wait(ctx, tok, time.Minute) // a refused subscription is an error or a 0x80 SUBACK
		if code, ok := tok.(*paho.SubscribeToken).Result()[f]; err == nil && ok && code < 0x80 &&
			strings.HasPrefix(f, protocol.TopicPrefix+"chunks/") && !strings.ContainsAny(f, "+#") {
			awaitChunk = append(awaitChunk, f)
		}
	}
	done := make(chan struct{})
	var once sync.Once
	if err := wait(ctx, c.Subscribe(marker, 0, func(paho.Client, paho.Message) { once.Do(func() { close(done) }) }), time.Minute); err != nil {
		t.Fatalf("subscribe %s: %v", marker, err)
	}
	if err := wait(ctx, c.Publish(marker, 1, false, []byte("x")), time.Minute); err != nil {
		t.Fatalf("publish %s: %v", marker, err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the marker never came back")
	}
	for _, f := range awaitChunk {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			n := len(got[f])
			mu.Unlock()
			if n > 0 || time.Now().After(deadline) {
				break
			}
		}
	}
	for _, f := range filters {
		c.Unsubscribe(f).WaitTimeout(5 * time.Second)
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}

func scopedUsers(t *testing.T, dir string) string {
	users := map[string][2]string{
		"operator": {"operator-secret", RoleOperator}, "viewer": {"viewer-secret", RoleViewer},
		"publisher": {"publisher-secret", RolePublisher}, "dev-b": {"dev-b-secret", RoleDevice},
	}
	p := writeUsers(t, dir, users)
	h, _ := HashPassword("dev-a-secret")
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "  - name: dev-a\n    password_hash: %q\n    role: device\n    channels: [stable]\n    apps: [hello]\n", h)
	f.Close()
	return p
}

// TestACLLeastPrivilegeEmbedded: a device reads only its channels' and
// apps' releases, chunks only by app and payload hash (one SUBSCRIBE to
// chunks/# sent every chunk of every release before); a viewer cannot
// publish; a publisher cannot write a device's status.
func TestACLLeastPrivilegeEmbedded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), Users: scopedUsers(t, dir)})
	url := b.URL()
	hello := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)
	other := makeBundle(t, dir, "other", "1.0.0", 1, 10_000)
	op := connect(t, url, "operator", "operator-secret", "")
	for _, pub := range []struct {
		r  testRelease
		ch string
	}{{hello, "stable"}, {hello, "beta"}, {other, "stable"}} {
		if _, err := PublishBundle(ctx, op, pub.r.path, PublishOptions{Keyring: pub.r.kr, Channel: pub.ch}); err != nil {
			t.Fatal(err)
		}
	}
	p := protocol.TopicPrefix
	helloChunk0, _ := protocol.ChunkTopic("hello", hello.m.Payload.SHA256, 0)
	otherChunk0, _ := protocol.ChunkTopic("other", other.m.Payload.SHA256, 0)
	stableHello, _ := protocol.ReleaseFilter("stable", "hello")
	betaHello, _ := protocol.ReleaseFilter("beta", "hello")
	stableOther, _ := protocol.ReleaseFilter("stable", "other")
	devA := connect(t, url, "dev-a", "dev-a-secret", "dev-a")
	got := received(t, devA, p+"device/dev-a/sync",
		p+"chunks/#", p+"chunks/hello/+/+", p+"chunks/hello/#", otherChunk0, betaHello, stableOther, p+"release/#",
		helloChunk0, p+"chunks/hello/"+hello.m.Payload.SHA256+"/+", stableHello)
	for _, denied := range []string{p + "chunks/#", p + "chunks/hello/+/+", p + "chunks/hello/#", otherChunk0, betaHello, stableOther, p + "release/#"} {
		if len(got[denied]) > 0 {
			t.Errorf("device dev-a (channels stable, apps hello) received %d messages for %s: %v", len(got[denied]), denied, got[denied][:1])
		}
	}
	if len(got[helloChunk0]) != 1 || len(got[p+"chunks/hello/"+hello.m.Payload.SHA256+"/+"]) != len(hello.m.Payload.Chunks) || len(got[stableHello]) != 1 {
		t.Errorf("device dev-a did not receive its own release and chunks: %v", got)
	}
	// An unscoped device still cannot sweep all chunks.
	devB := connect(t, url, "dev-b", "dev-b-secret", "dev-b")
	got = received(t, devB, p+"device/dev-b/sync", p+"chunks/#", p+"chunks/+/+/+", stableOther)
	if len(got[p+"chunks/#"])+len(got[p+"chunks/+/+/+"]) > 0 {
		t.Errorf("device dev-b swept %d chunks with a wildcard", len(got[p+"chunks/#"])+len(got[p+"chunks/+/+/+"]))
	}
	if len(got[stableOther]) != 1 {
		t.Errorf("an unscoped device cannot read a release of its channel")
	}

	operatorRoles(t, url, devA, other)
}

func TestUsersFileScopeValidated(t *testing.T) {
	dir := t.TempDir()
	h, _ := HashPassword("operator-secret")
	p := filepath.Join(dir, "u.yaml")
	os.WriteFile(p, []byte(fmt.Sprintf("users:\n  - name: op\n    password_hash: %q\n    role: operator\n    apps: [hello]\n", h)), 0o600)
	if _, err := LoadUsers(p); err == nil || !strings.Contains(err.Error(), "restrict devices only") {
		t.Fatalf("apps on an operator: want a clear error, got %v", err)
	}
	os.WriteFile(p, []byte(fmt.Sprintf("users:\n  - name: op\n    password_hash: %q\n    role: admin\n", h)), 0o600)
	if _, err := LoadUsers(p); err == nil || !strings.Contains(err.Error(), "publisher, viewer") {
		t.Fatalf("unknown role: want the roles named, got %v", err)
	}
}

// operatorRoles: a viewer reads statuses but publishes nothing; a
// publisher publishes releases and deltas but cannot write a device's
// status.
func operatorRoles(t *testing.T, url string, devA paho.Client, other testRelease) {
	ctx := context.Background()
	p := protocol.TopicPrefix
	op := connect(t, url, "operator", "operator-secret", "")
	statusA, _ := protocol.StatusTopic("dev-a")
	s := &protocol.DeviceStatus{Schema: 1, Device: "dev-a", Time: time.Now().UTC(), Online: true}
	raw, _ := s.Marshal()
	if err := wait(ctx, devA.Publish(statusA, 1, true, raw), time.Minute); err != nil {
		t.Fatal(err)
	}
	viewer := connect(t, url, "viewer", "viewer-secret", "")
	if snap, err := Snapshot(ctx, viewer, protocol.DeviceFilters); err != nil || len(snap[statusA]) == 0 {
		t.Fatalf("the viewer cannot read statuses: %v %v", err, snap)
	}
	PublishBundle(ctx, viewer, other.path, PublishOptions{Keyring: other.kr, Channel: "beta", SkipReadBack: true})
	if snap, _ := Snapshot(ctx, op, []string{p + "release/beta/other/#"}); len(snap) > 0 {
		t.Error("a viewer published a release")
	}
	pubc := connect(t, url, "publisher", "publisher-secret", "")
	if _, err := PublishBundle(ctx, pubc, other.path, PublishOptions{Keyring: other.kr, Channel: "beta"}); err != nil {
		t.Fatalf("the publisher cannot publish: %v", err)
	}
	// Deltas (SPEC.md §8.9) are the publisher's to write too
	// (`edgefleet publish --delta-from`).
	delta, _ := protocol.DeltaTopic("other", strings.Repeat("a", 64), strings.Repeat("b", 64))
	if err := wait(ctx, pubc.Publish(delta, 1, true, []byte(`{"delta":1}`)), time.Minute); err != nil {
		t.Fatalf("the publisher cannot publish a delta: %v", err)
	}
	if snap, err := Snapshot(ctx, op, []string{delta}); err != nil || string(snap[delta]) != `{"delta":1}` {
		t.Errorf("the publisher's delta was not stored (%v): %q", err, snap[delta])
	}
	wait(ctx, pubc.Publish(statusA, 0, true, []byte(`{"schema":1}`)), time.Minute)
	wait(ctx, pubc.Publish(p+"sync/x", 1, false, []byte("x")), time.Minute)
	snap, err := Snapshot(ctx, op, []string{statusA})
	if err != nil || string(snap[statusA]) != string(raw) {
		t.Errorf("a publisher overwrote a device's status: %q", snap[statusA])
	}
}

// The same operator roles on Mosquitto with docs/mosquitto's ACL.
func TestACLOperatorRolesMosquitto(t *testing.T) {
	url := startMosquitto(t, map[string]string{"operator": "operator-secret", "viewer": "viewer-secret", "publisher": "publisher-secret", "dev-a": "dev-a-secret"})
	other := makeBundle(t, t.TempDir(), "other", "1.0.0", 1, 10_000)
	operatorRoles(t, url, connect(t, url, "dev-a", "dev-a-secret", "dev-a"), other)
}

// TestACLDeltaScopeEmbedded: a device reads deltas only from its own base
// (delta/<app>/+/<base sha256>) and of its apps; a wildcard over bases or
// apps gets nothing. A publisher may publish deltas.
func TestACLDeltaScopeEmbedded(t *testing.T) {
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), Users: scopedUsers(t, dir)})
	url := b.URL()
	pub := connect(t, url, "publisher", "publisher-secret", "")
	sha := func(c byte) string { return strings.Repeat(string(c), 64) }
	mine, _ := protocol.DeltaTopic("hello", sha('a'), sha('b'))
	otherBase, _ := protocol.DeltaTopic("hello", sha('a'), sha('c'))
	otherApp, _ := protocol.DeltaTopic("other", sha('d'), sha('b'))
	for _, tp := range []string{mine, otherBase, otherApp} {
		if err := wait(context.Background(), pub.Publish(tp, 1, true, []byte(`{"delta":"`+tp+`"}`)), time.Minute); err != nil {
			t.Fatalf("the publisher cannot publish the delta %s: %v", tp, err)
		}
	}
	p := protocol.TopicPrefix
	myFilter, _ := protocol.DeltasFromFilter("hello", sha('b'))
	otherAppFilter, _ := protocol.DeltasFromFilter("other", sha('b'))
	for _, dev := range []struct{ name, pass string }{{"dev-a", "dev-a-secret"}, {"dev-b", "dev-b-secret"}} {
		c := connect(t, url, dev.name, dev.pass, dev.name)
		got := received(t, c, p+"device/"+dev.name+"/sync", p+"delta/#", p+"delta/+/+/+", p+"delta/hello/+/+", p+"delta/hello/#", myFilter, otherAppFilter)
		for _, denied := range []string{p + "delta/#", p + "delta/+/+/+", p + "delta/hello/+/+", p + "delta/hello/#"} {
			if len(got[denied]) > 0 {
				t.Errorf("%s swept %d deltas with %s", dev.name, len(got[denied]), denied)
			}
		}
		if len(got[myFilter]) != 1 {
			t.Errorf("%s got %d deltas from its own base with %s, want 1", dev.name, len(got[myFilter]), myFilter)
		}
		want := 1 // dev-b is not scoped to apps
		if dev.name == "dev-a" {
			want = 0 // apps: [hello]
		}
		if len(got[otherAppFilter]) != want {
			t.Errorf("%s got %d deltas of app other, want %d", dev.name, len(got[otherAppFilter]), want)
		}
	}
}
