package fleet

import (
	"context"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

var aclUsers = map[string][2]string{
	"operator": {"operator-secret", RoleOperator},
	"dev-a":    {"dev-a-secret", RoleDevice},
	"dev-b":    {"dev-b-secret", RoleDevice},
}

// TestACLEmbedded and TestACLMosquitto run the same access matrix against
// the embedded broker with a users file and against a real Mosquitto with
// docs/mosquitto's configuration and ACL.
func TestACLEmbedded(t *testing.T) {
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), Users: writeUsers(t, dir, aclUsers)})
	aclMatrix(t, b.URL())

	// Only the embedded broker can insist that a device's client id is its id.
	if _, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), Username: "dev-a", Password: "dev-a-secret", ClientID: "dev-b"}); err == nil {
		t.Error("device dev-a connected with client id dev-b")
	}
}

func TestACLMosquitto(t *testing.T) {
	pw := map[string]string{}
	for n, v := range aclUsers {
		pw[n] = v[0]
	}
	url := startMosquitto(t, pw)
	aclMatrix(t, url)
}

func aclMatrix(t *testing.T, url string) {
	ctx := context.Background()
	dir := t.TempDir()
	r := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)

	if _, err := Connect(ctx, ClientOptions{Broker: url, Username: "dev-a", Password: "wrong", ClientID: "dev-a"}); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	if _, err := Connect(ctx, ClientOptions{Broker: url, ClientID: "anon"}); err == nil {
		t.Fatal("an anonymous client was accepted")
	}

	op := connect(t, url, "operator", "operator-secret", "")
	if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable"}); err != nil {
		t.Fatalf("operator cannot publish a release: %v", err)
	}
	for _, dev := range []string{"dev-a", "dev-b"} {
		if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Device: dev}); err != nil {
			t.Fatalf("operator cannot assign: %v", err)
		}
	}

	// A rollout: its candidate and control message (operators only).
	if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable", Candidate: true}); err != nil {
		t.Fatalf("operator cannot publish a rollout candidate: %v", err)
	}
	now := time.Now().UTC()
	ro := &protocol.Rollout{Schema: 1, ID: "hello-1-acl0", Channel: "stable", App: "hello", Version: "1.0.0", Sequence: 1,
		Profiles: []string{r.m.Profile}, Waves: []protocol.Wave{{Percent: 100}}, MaxFailures: 0.1, State: protocol.RolloutRunning,
		Cut: protocol.FullCut, Cuts: []uint64{protocol.FullCut}, WaveStarted: []time.Time{now}, Created: now, Updated: now}
	ctrlRaw, err := ro.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ctrlTopic, _ := protocol.RolloutTopic("stable", "hello")
	candTopic, _ := protocol.CandidateTopic("stable", "hello", r.m.Profile)
	if err := wait(ctx, op.Publish(ctrlTopic, 1, true, ctrlRaw), time.Minute); err != nil {
		t.Fatalf("operator cannot publish a rollout: %v", err)
	}

	devA := connect(t, url, "dev-a", "dev-a-secret", "dev-a")
	// Reads. Each subscription's retained messages arrive before the next
	// SUBACK, so when the allowed ones arrived the forbidden would have too.
	var mu sync.Mutex
	got := map[string]bool{}
	handler := func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got[m.Topic()] = true
		mu.Unlock()
	}
	forbidden := protocol.TopicPrefix + "device/dev-b/desired/hello"
	wait(ctx, devA.Subscribe(protocol.TopicPrefix+"device/dev-b/#", 0, handler), time.Minute) // refused or filtered
	wait(ctx, devA.Subscribe(protocol.StatusFilter, 0, handler), time.Minute)
	relTopic, _ := protocol.ReleaseTopic("stable", "hello", "linux-amd64")
	chunk0, _ := protocol.ChunkTopic("hello", r.m.Payload.SHA256, 0)
	ownDesired, _ := protocol.DesiredTopic("dev-a", "hello")
	allowed := []string{relTopic, chunk0, ownDesired, ctrlTopic, candTopic}
	done := make(chan struct{})
	var once sync.Once
	rolloutFilters, _ := protocol.RolloutFilters("stable", "hello")
	for _, f := range append([]string{relTopic, chunk0, protocol.TopicPrefix + "device/dev-a/desired/+"}, rolloutFilters...) {
		if err := wait(ctx, devA.Subscribe(f, 0, func(c paho.Client, m paho.Message) {
			handler(c, m)
			mu.Lock()
			defer mu.Unlock()
			for _, a := range allowed {
				if !got[a] {
					return
				}
			}
			once.Do(func() { close(done) })
		}), time.Minute); err != nil {
			t.Fatalf("device cannot subscribe to %s: %v", f, err)
		}
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("device dev-a did not receive its allowed retained messages; got %v", got)
	}
	mu.Lock()
	if got[forbidden] {
		t.Errorf("device dev-a read dev-b's desired release")
	}
	mu.Unlock()

	// Writes: forbidden ones at QoS 0 (Mosquitto drops them silently, the
	// embedded broker too), then an allowed QoS 1 publish: once it is
	// acknowledged, the earlier ones were processed.
	statusB, _ := protocol.StatusTopic("dev-b")
	statusA, _ := protocol.StatusTopic("dev-a")
	otherRel, _ := protocol.ReleaseTopic("stable", "evil", "linux-amd64")
	for _, topic := range []string{statusB, otherRel, relTopic, chunk0, ctrlTopic, candTopic, protocol.DriverTopic, protocol.KeySetTopic} {
		wait(ctx, devA.Publish(topic, 0, true, []byte(`{"schema":1}`)), time.Minute)
	}
	s := &protocol.DeviceStatus{Schema: 1, Device: "dev-a", Time: time.Now().UTC(), Online: true}
	raw, _ := s.Marshal()
	if err := wait(ctx, devA.Publish(statusA, 1, true, raw), time.Minute); err != nil {
		t.Fatalf("device cannot publish its own status: %v", err)
	}

	// A NATS cluster stores retained messages in JetStream after it
	// acknowledges them, so a read right after the acknowledgement can
	// miss it on a loaded machine: read again for a while.
	var snap map[string][]byte
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if snap, err = Snapshot(ctx, op, []string{protocol.TopicPrefix + "#"}); err != nil {
			t.Fatal(err)
		}
		if string(snap[statusA]) == string(raw) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if string(snap[statusA]) != string(raw) {
		t.Errorf("dev-a's own status was not stored: %q", snap[statusA])
	}
	if _, ok := snap[statusB]; ok {
		t.Errorf("dev-a wrote dev-b's status")
	}
	if _, ok := snap[otherRel]; ok {
		t.Errorf("a device published a release")
	}
	if e, err := protocol.ParseEnvelope(snap[relTopic]); err != nil {
		t.Errorf("a device overwrote the release: %v", err)
	} else if _, err := e.Open(r.kr); err != nil {
		t.Errorf("release no longer verifies: %v", err)
	}
	if len(snap[chunk0]) != int(r.m.Payload.ChunkLen(0)) {
		t.Errorf("a device overwrote a chunk")
	}
	if string(snap[ctrlTopic]) != string(ctrlRaw) {
		t.Errorf("a device overwrote the rollout's control message: %q", snap[ctrlTopic])
	}
	if e, err := protocol.ParseEnvelope(snap[candTopic]); err != nil {
		t.Errorf("a device overwrote the rollout's candidate: %v", err)
	} else if _, err := e.Open(r.kr); err != nil {
		t.Errorf("the candidate no longer verifies: %v", err)
	}
	if _, ok := snap[protocol.KeySetTopic]; ok {
		t.Errorf("a device wrote the key set")
	}
	if _, ok := snap[protocol.DriverTopic]; ok {
		t.Errorf("a device wrote the driver's presence")
	}
}
