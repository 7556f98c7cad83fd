package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// waitClosed reads from c until the broker closes it; it fails when the
// broker sent something or the socket is still open after testkit.Hang (a
// guard against a hung test, not a speed limit).
func waitClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testkit.Hang))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		t.Errorf("%s: the broker sent %#x instead of closing the connection", what, b[0])
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Errorf("%s: still open after %s; the broker never closes a connection that sends no CONNECT", what, testkit.Hang)
	case err == nil || (!errors.Is(err, io.EOF) && !isReset(err)):
		t.Errorf("%s: read ended with %v, want the broker to close the connection", what, err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// TestConnectDeadline: sockets that open and send nothing, or only part of
// a CONNECT, or never finish the TLS handshake, are closed by the broker
// once ConnectTimeout has passed; a client that connected properly before
// them is not affected.
func TestConnectDeadline(t *testing.T) {
	ca := testkit.NewCA(t, "", "deadline")
	srv := ca.Server("broker")
	for _, tc := range []struct {
		name string
		o    BrokerOptions
	}{
		{"plain", BrokerOptions{}},
		{"tls", BrokerOptions{TLSCert: srv.Cert, TLSKey: srv.Key}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.DataDir = t.TempDir()
			o.ConnectTimeout = 300 * time.Millisecond
			b := startEmbedded(t, o)
			good, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), CA: map[bool]string{true: ca.File}[o.TLSCert != ""]})
			if err != nil {
				t.Fatal(err)
			}
			defer good.Disconnect(100)

			var idle []net.Conn
			for range 100 {
				c, err := net.Dial("tcp", b.Addr())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				idle = append(idle, c)
			}
			// Half a CONNECT: fixed header says 16 bytes follow, 3 come.
			partial, err := net.Dial("tcp", b.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer partial.Close()
			if _, err := partial.Write([]byte{0x10, 16, 0, 4, 'M'}); err != nil {
				t.Fatal(err)
			}
			for i, c := range idle {
				waitClosed(t, c, "a socket that sent nothing")
				if t.Failed() {
					t.Fatalf("socket %d of %d", i+1, len(idle))
				}
			}
			waitClosed(t, partial, "a socket that sent part of a CONNECT")

			// The proper client connected before the idle sockets, so
			// their deadline would have passed for it too.
			topic := protocol.TopicPrefix + "sync/deadline"
			if err := wait(context.Background(), good.Publish(topic, 1, false, []byte("x")), time.Minute); err != nil || !good.IsConnectionOpen() {
				t.Errorf("a client that completed CONNECT was disconnected by the CONNECT deadline: %v", err)
			}
		})
	}
	// A TLS client that completes the handshake on a TLS broker but sends
	// no CONNECT is closed too.
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), TLSCert: srv.Cert, TLSKey: srv.Key, ConnectTimeout: 300 * time.Millisecond})
	conf, err := TLSConfig(ca.File, "", "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", b.Addr(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitClosed(t, c, "a TLS connection that sent no CONNECT")
}

func TestConnectTimeoutOption(t *testing.T) {
	o := BrokerOptions{DataDir: t.TempDir()}
	if err := o.Validate(); err != nil || o.ConnectTimeout != DefaultConnectTimeout || o.MaxConcurrentLogins < 1 {
		t.Fatalf("defaults: %v, ConnectTimeout %s, MaxConcurrentLogins %d", err, o.ConnectTimeout, o.MaxConcurrentLogins)
	}
	o = BrokerOptions{DataDir: t.TempDir(), ConnectTimeout: -time.Second}
	if err := o.Validate(); err == nil {
		t.Fatal("a negative connect timeout was accepted")
	}
}

// TestUnknownUserCostsABcrypt: a login with an unknown user name runs one
// bcrypt comparison (against the dummy hash), as a wrong password for a
// known user does, so the time of a refusal does not reveal which user
// names exist. Counted, not timed.
func TestUnknownUserCostsABcrypt(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), Users: writeUsers(t, t.TempDir(), aclUsers)})
	try := func(user, pass, id string) (all, dummy int64) {
		t.Helper()
		a0, d0 := b.auth.compares.Load(), b.auth.dummyCompares.Load()
		if rc := rawLogin(t, b.Addr(), user, pass, id); rc != 4 && rc != 5 { // bad user name or password; not authorized
			t.Fatalf("login %q/%q: CONNACK %d, want a refusal", user, pass, rc)
		}
		return b.auth.compares.Load() - a0, b.auth.dummyCompares.Load() - d0
	}
	if all, dummy := try("dev-a", "wrong-password", "dev-a"); all != 1 || dummy != 0 {
		t.Errorf("wrong password for a known user: %d bcrypt comparisons (%d against the dummy hash), want 1 (0)", all, dummy)
	}
	if all, dummy := try("nobody", "wrong-password", "nobody"); all != 1 || dummy != 1 {
		t.Errorf("unknown user: %d bcrypt comparisons (%d against the dummy hash), want 1 (1): an unknown user must cost what a known one does", all, dummy)
	}
	if all, dummy := try("", "wrong-password", "empty"); all != 1 || dummy != 1 {
		t.Errorf("empty user name: %d bcrypt comparisons (%d against the dummy hash), want 1 (1)", all, dummy)
	}
	if _, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), Username: "dev-a", Password: "dev-a-secret", ClientID: "dev-a"}); err != nil {
		t.Errorf("the right password is refused: %v", err)
	}
}

// rawLogin sends one MQTT 3.1.1 CONNECT with user name and password (paho
// would try again with 3.1 after a refusal) and returns the CONNACK code.
func rawLogin(t *testing.T, addr, user, pass, id string) byte {
	t.Helper()
	rc := sendConnect(t, addr, connectPacket(id, user, pass, "", ""))
	if rc == 255 {
		t.Fatal("no CONNACK: the broker closed the connection")
	}
	return rc
}

// TestLoginsBounded: with MaxConcurrentLogins 1 and a login slot held, a
// login waits at most ConnectTimeout for a turn and is then refused with
// a reason; the held slot's release lets the next login through.
func TestLoginsBounded(t *testing.T) {
	var log testkit.Buffer
	o := BrokerOptions{DataDir: t.TempDir(), Users: writeUsers(t, t.TempDir(), aclUsers), MaxConcurrentLogins: 1, ConnectTimeout: 500 * time.Millisecond, Listen: "127.0.0.1:0"}
	o.Logf = func(f string, a ...any) { t.Logf(f, a...); log.Write([]byte(fmt.Sprintf(f, a...) + "\n")) }
	b, err := StartBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.auth.logins <- struct{}{} // a login in progress
	if _, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), Username: "dev-a", Password: "dev-a-secret", ClientID: "dev-a"}); err == nil {
		t.Fatal("a login ran while the only login slot was taken")
	}
	if !strings.Contains(log.String(), "logins were being checked") {
		t.Errorf("the broker did not say why it refused the login:\n%s", log.String())
	}
	<-b.auth.logins
	c, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), Username: "dev-a", Password: "dev-a-secret", ClientID: "dev-a"})
	if err != nil {
		t.Fatalf("a login after the slot was freed: %v", err)
	}
	c.Disconnect(100)
}

// BenchmarkLogin compares the broker's work for a known user with a wrong
// password and for an unknown user (report the ratio of the two ns/op;
// it should be close to 1).
func BenchmarkLogin(b *testing.B) {
	br := startEmbedded(b, BrokerOptions{DataDir: b.TempDir(), Users: writeUsers(b, b.TempDir(), aclUsers)})
	for _, bc := range []struct{ name, user string }{{"known-user", "dev-a"}, {"unknown-user", "nobody"}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := br.auth.checkPassword(bc.user, []byte("wrong-password")); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}
