package fleet

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// tlsDial connects to url with the given CA, client certificate (may be
// zero) and optional user/password.
func tlsDial(url, ca string, cert certFiles, user, pass, clientID string) (paho.Client, error) {
	return Connect(context.Background(), ClientOptions{Broker: url, CA: ca, Cert: cert.Cert, Key: cert.Key,
		Username: user, Password: pass, ClientID: clientID, ConnectTimeout: 5 * time.Second})
}

func mustTLSDial(t *testing.T, url, ca string, cert certFiles, user, pass, clientID string) paho.Client {
	t.Helper()
	c, err := tlsDial(url, ca, cert, user, pass, clientID)
	if err != nil {
		t.Fatalf("connect to %s as %q (client id %q): %v", url, cert.Cert+user, clientID, err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// TestTLSClientCertificates runs the embedded broker with TLS and
// --client-ca: identities come from certificates (CN = device id, OU
// "operator" = operator) and the ACL follows them.
func TestTLSClientCertificates(t *testing.T) {
	pki := newTestPKI(t)
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), TLSCert: pki.Server.Cert, TLSKey: pki.Server.Key, ClientCA: pki.CA.File})
	if !strings.HasPrefix(b.URL(), "ssl://") || b.Open() {
		t.Fatalf("a TLS broker with a client CA reports URL %s, open %v", b.URL(), b.Open())
	}
	certMatrix(t, b.URL(), pki)

	// A device certificate whose CN cannot be a device id (nor a topic
	// segment) is refused, even with a matching client id.
	bad := pki.CA.Client("bad-cn", "pi 17/status")
	if c, err := tlsDial(b.URL(), pki.CA.File, bad, "", "", "pi 17/status"); err == nil {
		c.Disconnect(0)
		t.Error("a device certificate with CN \"pi 17/status\" was accepted")
	}
	// '.' is no longer a device id character (NATS refuses it in a client
	// id, SPEC.md §8.1): the embedded broker refuses such a CN too, so a
	// fleet that works here works on every listed broker.
	dotted := pki.CA.Client("dotted-cn", "pi.17")
	if c, err := tlsDial(b.URL(), pki.CA.File, dotted, "", "", "pi.17"); err == nil {
		c.Disconnect(0)
		t.Error("a device certificate with CN \"pi.17\" was accepted")
	}

	// A users file is not consulted when only --client-ca is set: user
	// name and password without a certificate are refused at the TLS
	// handshake.
	if c, err := tlsDial(b.URL(), pki.CA.File, certFiles{}, "dev-a", "whatever", "dev-a"); err == nil {
		c.Disconnect(0)
		t.Fatal("a client without a certificate connected to a broker that requires one")
	}
}

// certMatrix checks who may connect and what each identity may write on
// a broker that verifies client certificates from pki.CA.
func certMatrix(t *testing.T, url string, pki *testPKI) {
	ctx := context.Background()
	dir := t.TempDir()
	r := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)

	// Refused: no certificate, a certificate from another CA, a device
	// certificate used with another client id, a server that does not
	// trust our CA (wrong CA on the client side).
	refused := []struct {
		what     string
		ca       string
		cert     certFiles
		clientID string
	}{
		{"no client certificate", pki.CA.File, certFiles{}, "dev-a"},
		{"a certificate from another CA", pki.CA.File, pki.ForeignDevA, "dev-a"},
		{"dev-a's certificate with client id dev-b", pki.CA.File, pki.DevA, "dev-b"},
		{"a client that does not trust the broker's CA", pki.ForeignCA.File, pki.DevA, "dev-a"},
	}
	for _, c := range refused {
		if cl, err := tlsDial(url, c.ca, c.cert, "", "", c.clientID); err == nil {
			cl.Disconnect(0)
			t.Errorf("%s was accepted", c.what)
		}
	}
	// Plain MQTT on the TLS port fails.
	plain := "tcp://" + strings.TrimPrefix(url, "ssl://")
	if cl, err := tlsDial(plain, "", certFiles{}, "", "", "dev-a"); err == nil {
		cl.Disconnect(0)
		t.Error("a plain tcp:// client connected to the TLS listener")
	}
	// TLS settings with a tcp:// URL are refused before anything is sent
	// in clear.
	if _, err := tlsDial(plain, pki.CA.File, pki.Operator, "", "", ""); err == nil || !strings.Contains(err.Error(), "use ssl://") {
		t.Errorf("a tcp:// URL with --ca/--cert: %v, want a refusal that says to use ssl://", err)
	}

	// The operator (OU operator) publishes a release and assigns one.
	op := mustTLSDial(t, url, pki.CA.File, pki.Operator, "", "", "")
	res, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable"})
	if err != nil {
		t.Fatalf("an operator certificate cannot publish a release: %v", err)
	}
	if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Device: "dev-a"}); err != nil {
		t.Fatalf("an operator certificate cannot assign: %v", err)
	}

	// A certificate without OU operator is a device, whatever its CN: it
	// cannot publish a release (its publish is dropped; the QoS 1 publish
	// of its own status after it proves the drop was processed).
	ops2 := mustTLSDial(t, url, pki.CA.File, pki.OperatorWithoutOUAsDev, "", "", "ops-2")
	evil, _ := protocol.ReleaseTopic("stable", "evil", "linux-amd64")
	wait(ctx, ops2.Publish(evil, 0, true, []byte(`{"schema":1}`)), time.Minute)
	st2, _ := protocol.StatusTopic("ops-2")
	if err := wait(ctx, ops2.Publish(st2, 1, true, statusFor(t, "ops-2")), time.Minute); err != nil {
		t.Fatalf("ops-2 (a device certificate) cannot publish its own status: %v", err)
	}

	// dev-a reads releases and its own desired topic, not dev-b's.
	devA := mustTLSDial(t, url, pki.CA.File, pki.DevA, "", "", "dev-a")
	ownDesired, _ := protocol.DesiredTopic("dev-a", "hello")
	if err := readRetained(devA, []string{res.Topic, protocol.TopicPrefix + "device/dev-a/desired/+"}, res.Topic, ownDesired); err != nil {
		t.Errorf("dev-a over TLS: %v", err)
	}

	// dev-a writes only its own status.
	statusA, _ := protocol.StatusTopic("dev-a")
	statusB, _ := protocol.StatusTopic("dev-b")
	chunk0, _ := protocol.ChunkTopic("hello", r.m.Payload.SHA256, 0)
	for _, topic := range []string{statusB, evil, res.Topic, chunk0} {
		wait(ctx, devA.Publish(topic, 0, true, []byte(`{"schema":1}`)), time.Minute)
	}
	rawA := statusFor(t, "dev-a")
	if err := wait(ctx, devA.Publish(statusA, 1, true, rawA), time.Minute); err != nil {
		t.Fatalf("dev-a cannot publish its own status over TLS: %v", err)
	}
	// dev-b, connected by certificate too, publishes its own status.
	devB := mustTLSDial(t, url, pki.CA.File, pki.DevB, "", "", "dev-b")
	rawB := statusFor(t, "dev-b")
	if err := wait(ctx, devB.Publish(statusB, 1, true, rawB), time.Minute); err != nil {
		t.Fatalf("dev-b cannot publish its own status over TLS: %v", err)
	}

	snap, err := Snapshot(ctx, op, []string{protocol.TopicPrefix + "#"})
	if err != nil {
		t.Fatal(err)
	}
	if string(snap[statusA]) != string(rawA) {
		t.Errorf("dev-a's own status was not stored: %q", snap[statusA])
	}
	if string(snap[statusB]) != string(rawB) {
		t.Errorf("dev-b's status is %q, want its own (dev-a must not overwrite it)", snap[statusB])
	}
	if _, ok := snap[evil]; ok {
		t.Errorf("a device certificate published a release")
	}
	if e, err := protocol.ParseEnvelope(snap[res.Topic]); err != nil {
		t.Errorf("a device overwrote the release: %v", err)
	} else if _, err := e.Open(r.kr); err != nil {
		t.Errorf("the release no longer verifies: %v", err)
	}
	if len(snap[chunk0]) != int(r.m.Payload.ChunkLen(0)) {
		t.Errorf("a device overwrote a chunk")
	}
}

// readRetained subscribes a device to filters and waits until the
// retained messages on every topic in want arrived. (A device cannot use
// Snapshot: its sync marker topic is outside the device ACL.)
func readRetained(c paho.Client, filters []string, want ...string) error {
	var mu sync.Mutex
	got := map[string]bool{}
	done := make(chan struct{})
	var once sync.Once
	h := func(_ paho.Client, m paho.Message) {
		mu.Lock()
		defer mu.Unlock()
		got[m.Topic()] = true
		for _, w := range want {
			if !got[w] {
				return
			}
		}
		once.Do(func() { close(done) })
	}
	for _, f := range filters {
		if err := wait(context.Background(), c.Subscribe(f, 0, h), time.Minute); err != nil {
			return fmt.Errorf("subscribe to %s: %w", f, err)
		}
	}
	select {
	case <-done:
		return nil
	case <-time.After(time.Minute):
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("the retained messages %v did not all arrive; got %v", want, got)
	}
}

func statusFor(t *testing.T, dev string) []byte {
	t.Helper()
	s := &protocol.DeviceStatus{Schema: 1, Device: dev, Time: time.Now().UTC(), Online: true}
	raw, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestTLSUsersFile: TLS with server authentication only; clients log in
// with the users file.
func TestTLSUsersFile(t *testing.T) {
	pki := newTestPKI(t)
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), TLSCert: pki.Server.Cert, TLSKey: pki.Server.Key, Users: writeUsers(t, dir, aclUsers)})
	ctx := context.Background()
	url := b.URL()

	if c, err := tlsDial(url, pki.CA.File, certFiles{}, "dev-a", "wrong-secret", "dev-a"); err == nil {
		c.Disconnect(0)
		t.Fatal("a wrong password was accepted over TLS")
	}
	if c, err := tlsDial(url, pki.CA.File, certFiles{}, "", "", "anon"); err == nil {
		c.Disconnect(0)
		t.Fatal("an anonymous client was accepted over TLS")
	}
	if c, err := tlsDial(url, "", certFiles{}, "dev-a", "dev-a-secret", "dev-a"); err == nil {
		c.Disconnect(0)
		t.Fatal("a client that does not trust the test CA accepted the broker's certificate")
	}
	// Without --client-ca, a client certificate is not an identity: the
	// broker does not ask for one, and the login still needs a password.
	if c, err := tlsDial(url, pki.CA.File, pki.Operator, "", "", ""); err == nil {
		c.Disconnect(0)
		t.Fatal("a client certificate logged in on a broker without --client-ca")
	}

	r := makeBundle(t, dir, "hello", "1.0.0", 1, 10_000)
	op := mustTLSDial(t, url, pki.CA.File, certFiles{}, "operator", "operator-secret", "")
	res, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable"})
	if err != nil {
		t.Fatalf("the operator cannot publish over TLS: %v", err)
	}
	devA := mustTLSDial(t, url, pki.CA.File, certFiles{}, "dev-a", "dev-a-secret", "dev-a")
	if err := readRetained(devA, []string{res.Topic}, res.Topic); err != nil {
		t.Fatalf("dev-a over TLS: %v", err)
	}
	statusA, _ := protocol.StatusTopic("dev-a")
	statusB, _ := protocol.StatusTopic("dev-b")
	wait(ctx, devA.Publish(statusB, 0, true, statusFor(t, "dev-b")), time.Minute)
	if err := wait(ctx, devA.Publish(statusA, 1, true, statusFor(t, "dev-a")), time.Minute); err != nil {
		t.Fatal(err)
	}
	snap, err := Snapshot(ctx, op, []string{protocol.StatusFilter})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := snap[statusA]; !ok {
		t.Error("dev-a's own status was not stored")
	}
	if _, ok := snap[statusB]; ok {
		t.Error("dev-a wrote dev-b's status")
	}
}

// TestTLSUsersAndClientCertificates: with both --users and --client-ca a
// certificate is optional; either a certificate or a password identifies
// the client, and a certificate from another CA is still refused.
func TestTLSUsersAndClientCertificates(t *testing.T) {
	pki := newTestPKI(t)
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), TLSCert: pki.Server.Cert, TLSKey: pki.Server.Key,
		ClientCA: pki.CA.File, Users: writeUsers(t, dir, aclUsers)})
	url := b.URL()
	mustTLSDial(t, url, pki.CA.File, pki.DevB, "", "", "dev-b")
	mustTLSDial(t, url, pki.CA.File, certFiles{}, "dev-a", "dev-a-secret", "dev-a")
	if c, err := tlsDial(url, pki.CA.File, pki.ForeignDevA, "", "", "dev-a"); err == nil {
		c.Disconnect(0)
		t.Error("a certificate from another CA was accepted")
	}
	if c, err := tlsDial(url, pki.CA.File, certFiles{}, "", "", "anon"); err == nil {
		c.Disconnect(0)
		t.Error("a client with neither certificate nor password was accepted")
	}
	certMatrix(t, url, pki)
}

// TestTLSPlainClientOnTLSListener: a raw TCP MQTT CONNECT to the TLS port
// gets no CONNACK (the broker reads it as a broken TLS handshake).
func TestTLSPlainClientOnTLSListener(t *testing.T) {
	pki := newTestPKI(t)
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), TLSCert: pki.Server.Cert, TLSKey: pki.Server.Key, ClientCA: pki.CA.File})
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// CONNECT, MQTT 3.1.1, clean session, keepalive 30, client id "x".
	connect := []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'x'}
	conn.Write(connect)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if n >= 2 && buf[0] == 0x20 {
		t.Fatalf("the TLS listener answered a plain CONNECT with a CONNACK % x", buf[:n])
	}
	// And a TLS client that offers no certificate fails the handshake.
	tc, err := tls.Dial("tcp", b.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		tc.Write(connect)
		tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, rerr := tc.Read(buf)
		tc.Close()
		if rerr == nil && n >= 2 && buf[0] == 0x20 {
			t.Fatal("a TLS client without a certificate got a CONNACK")
		}
	}
}
