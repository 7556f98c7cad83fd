package fleet

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// TestTLSOperatorRolesByCertificate: on the embedded broker with
// --client-ca, a client certificate's OU names the operator role
// (fleet/broker.go authenticate): OU "viewer" reads statuses and releases
// but publishes no release, assignment, rollout or key set; OU
// "publisher" publishes releases, deltas, assignments, rollouts and key
// sets but no admin topic (a device's status, a logs request, the rollout
// driver's presence); OU "operator" writes all of those. Real TLS
// connections with real certificates.
func TestTLSOperatorRolesByCertificate(t *testing.T) {
	ctx := context.Background()
	pki := newTestPKI(t)
	viewerCert := pki.CA.Client("viewer-1", "viewer-1", RoleViewer)
	publisherCert := pki.CA.Client("publisher-1", "publisher-1", RolePublisher)
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), TLSCert: pki.Server.Cert, TLSKey: pki.Server.Key, ClientCA: pki.CA.File})
	url := b.URL()
	dir := t.TempDir()
	hello := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)
	other := makeBundle(t, dir, "other", "1.0.0", 1, 10_000)
	p := protocol.TopicPrefix

	op := mustTLSDial(t, url, pki.CA.File, pki.Operator, "", "", "")
	devA := mustTLSDial(t, url, pki.CA.File, pki.DevA, "", "", "dev-a")
	statusA, _ := protocol.StatusTopic("dev-a")
	rawA := statusFor(t, "dev-a")
	if err := wait(ctx, devA.Publish(statusA, 1, true, rawA), time.Minute); err != nil {
		t.Fatalf("dev-a cannot publish its own status: %v", err)
	}
	if _, err := PublishBundle(ctx, op, hello.path, PublishOptions{Keyring: hello.kr, Channel: "stable"}); err != nil {
		t.Fatalf("the operator certificate cannot publish: %v", err)
	}
	snapshot := func(filters ...string) map[string][]byte {
		t.Helper()
		s, err := Snapshot(ctx, op, filters)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// publishThenSync publishes the allowed writes at QoS 1 (each must be
	// acknowledged), the denied ones at QoS 0 (the broker drops them; a
	// refused QoS 1 publish closes the connection), then a QoS 1 sync
	// marker the client may write: once it is acknowledged, the broker has
	// judged every write before it.
	publishThenSync := func(c paho.Client, who string, allowed, denied map[string][]byte) {
		t.Helper()
		for topic, payload := range allowed {
			if err := wait(ctx, c.Publish(topic, 1, true, payload), time.Minute); err != nil {
				t.Fatalf("%s cannot write %s: %v", who, topic, err)
			}
		}
		for topic, payload := range denied {
			wait(ctx, c.Publish(topic, 0, true, payload), time.Minute)
		}
		if err := wait(ctx, c.Publish(p+"sync/"+who, 1, false, []byte("x")), time.Minute); err != nil {
			t.Fatalf("%s cannot write its sync marker: %v", who, err)
		}
	}
	rolloutTopic, _ := protocol.RolloutTopic("stable", "hello")
	desiredA, _ := protocol.DesiredTopic("dev-a", "other")
	logsReqA, _ := protocol.LogsRequestTopic("dev-a")
	deltaT, _ := protocol.DeltaTopic("hello", strings.Repeat("a", 64), strings.Repeat("b", 64))
	betaOther, _ := protocol.ReleaseTopic("beta", "other", "linux-amd64")
	forged := []byte(`{"forged":true}`)

	// The viewer: reads statuses and releases, writes none of the
	// publisher's topics.
	viewer := mustTLSDial(t, url, pki.CA.File, viewerCert, "", "", "")
	vs, err := Snapshot(ctx, viewer, append([]string{p + "release/#"}, protocol.DeviceFilters...))
	if err != nil {
		t.Fatalf("the viewer certificate cannot take a snapshot: %v", err)
	}
	if !bytes.Equal(vs[statusA], rawA) {
		t.Errorf("the viewer certificate cannot read dev-a's status: %q", vs[statusA])
	}
	helloStable, _ := protocol.ReleaseTopic("stable", "hello", "linux-amd64")
	if len(vs[helloStable]) == 0 {
		t.Errorf("the viewer certificate cannot read the release on %s", helloStable)
	}
	// A refused QoS 1 publish closes the viewer's connection: one
	// connection per attempt.
	for _, o := range []PublishOptions{{Channel: "beta"}, {Device: "dev-a"}} {
		o.Keyring, o.SkipReadBack = other.kr, true
		c := mustTLSDial(t, url, pki.CA.File, viewerCert, "", "", "")
		if _, err := PublishBundle(ctx, c, other.path, o); err == nil {
			t.Errorf("a viewer certificate published a release (%+v) without an error", o)
		}
	}
	publishThenSync(viewer, "viewer-1", nil, map[string][]byte{rolloutTopic: forged, protocol.KeySetTopic: forged, deltaT: forged, statusA: forged, helloStable: forged})
	s := snapshot(p + "#")
	for _, tp := range []string{betaOther, desiredA, rolloutTopic, protocol.KeySetTopic, deltaT} {
		if len(s[tp]) > 0 {
			t.Errorf("a viewer certificate (OU viewer) wrote %s", tp)
		}
	}
	if !bytes.Equal(s[statusA], rawA) || bytes.Equal(s[helloStable], forged) {
		t.Error("a viewer certificate overwrote a device's status or a release")
	}

	// The publisher: releases, assignments, deltas, rollouts, key sets;
	// not a device's status, a logs request nor the driver's presence.
	pubc := mustTLSDial(t, url, pki.CA.File, publisherCert, "", "", "")
	if _, err := PublishBundle(ctx, pubc, other.path, PublishOptions{Keyring: other.kr, Channel: "beta"}); err != nil {
		t.Fatalf("the publisher certificate cannot publish a release: %v", err)
	}
	if _, err := PublishBundle(ctx, pubc, other.path, PublishOptions{Keyring: other.kr, Device: "dev-a"}); err != nil {
		t.Fatalf("the publisher certificate cannot assign a release: %v", err)
	}
	publishThenSync(pubc, "publisher-1", map[string][]byte{deltaT: []byte(`{"delta":1}`), rolloutTopic: []byte(`{"rollout":1}`), protocol.KeySetTopic: []byte(`{"keyset":1}`)},
		map[string][]byte{statusA: forged, logsReqA: forged, protocol.DriverTopic: forged})
	s = snapshot(p + "#")
	for tp, want := range map[string]string{deltaT: `{"delta":1}`, rolloutTopic: `{"rollout":1}`, protocol.KeySetTopic: `{"keyset":1}`} {
		if string(s[tp]) != want {
			t.Errorf("the publisher certificate could not write %s: holds %q", tp, s[tp])
		}
	}
	if len(s[betaOther]) == 0 || len(s[desiredA]) == 0 {
		t.Error("the publisher's release or assignment is missing")
	}
	if !bytes.Equal(s[statusA], rawA) {
		t.Errorf("a publisher certificate (OU publisher) overwrote dev-a's status: %q", s[statusA])
	}
	for _, tp := range []string{logsReqA, protocol.DriverTopic} {
		if len(s[tp]) > 0 {
			t.Errorf("a publisher certificate (OU publisher) wrote the admin topic %s", tp)
		}
	}

	// The operator writes the admin topics the publisher may not.
	publishThenSync(op, "ops-1", map[string][]byte{logsReqA: []byte(`{"req":1}`), protocol.DriverTopic: []byte(`{"driver":1}`), statusA: []byte(`{"op":1}`)}, nil)
	s = snapshot(p + "#")
	for tp, want := range map[string]string{logsReqA: `{"req":1}`, protocol.DriverTopic: `{"driver":1}`, statusA: `{"op":1}`} {
		if string(s[tp]) != want {
			t.Errorf("the operator certificate could not write %s: holds %q", tp, s[tp])
		}
	}
}
