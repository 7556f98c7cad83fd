package fleet

import (
	"context"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// takeoverLogin is how one client logs in for the takeover check.
type takeoverLogin struct {
	url            string
	user, pass, id string
	tls            *tls.Config
}

// connectWithWill connects like an agent: the given client id and a
// retained last will on its own status topic.
func connectWithWill(l takeoverLogin, willTopic, will string) (paho.Client, error) {
	po := paho.NewClientOptions().AddBroker(l.url).SetClientID(l.id).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(30*time.Second).SetKeepAlive(30*time.Second).
		SetWill(willTopic, will, 1, true)
	if l.user != "" {
		po.SetUsername(l.user).SetPassword(l.pass)
	}
	if l.tls != nil {
		po.SetTLSConfig(l.tls)
	}
	c := paho.NewClient(po)
	if err := wait(context.Background(), c.Connect(), time.Minute); err != nil {
		return nil, err
	}
	return c, nil
}

// checkNoTakeover: the victim (dev-b) is connected with a last will; the
// attacker logs in with its own credentials (dev-a) but the victim's client
// id. Whether the broker refuses the login or gives the attacker its own
// client id, the victim must stay connected and its will must not be
// published. op watches the victim's status topic.
func checkNoTakeover(t *testing.T, op paho.Client, victim, attacker takeoverLogin) {
	t.Helper()
	ctx := context.Background()
	statusB, _ := protocol.StatusTopic(victim.user)
	var mu sync.Mutex
	var seen []string
	alive := make(chan struct{})
	var once sync.Once
	if err := wait(ctx, op.Subscribe(statusB, 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		seen = append(seen, string(m.Payload()))
		mu.Unlock()
		if string(m.Payload()) == "still-here" {
			once.Do(func() { close(alive) })
		}
	}), time.Minute); err != nil {
		t.Fatal(err)
	}
	vc, err := connectWithWill(victim, statusB, "will-of-"+victim.user)
	if err != nil {
		t.Fatalf("victim %s cannot connect: %v", victim.user, err)
	}
	defer vc.Disconnect(100)

	ac, err := connectWithWill(attacker, statusB, "attacker-will")
	if err == nil {
		t.Logf("the broker accepted %s's login with client id %q (it must then have given it its own id)", attacker.user, attacker.id)
		defer ac.Disconnect(100)
	} else {
		t.Logf("the broker refused %s's login with client id %q: %v", attacker.user, attacker.id, err)
	}
	// The broker has handled the attacker's CONNECT (a takeover, with its
	// will, happens before the CONNACK). If the victim was disconnected,
	// this publish fails; if its will was sent, op sees it first.
	if !vc.IsConnectionOpen() {
		t.Errorf("%s's login with client id %q disconnected %s", attacker.user, attacker.id, victim.user)
	}
	if err := wait(ctx, vc.Publish(statusB, 1, false, []byte("still-here")), 30*time.Second); err != nil {
		t.Errorf("victim %s can no longer publish after %s logged in with its client id: %v", victim.user, attacker.user, err)
	} else {
		select {
		case <-alive:
		case <-time.After(time.Minute):
			t.Errorf("victim %s's publish after the attempted takeover never reached the operator", victim.user)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if s == "will-of-"+victim.user {
			t.Errorf("%s's last will was published when %s logged in with its client id: the broker closed the victim's session", victim.user, attacker.user)
		}
		if s == "attacker-will" {
			t.Errorf("%s published on %s's status through its will", attacker.user, victim.user)
		}
	}
}

func tlsFor(t *testing.T, ca, cert, key string) *tls.Config {
	t.Helper()
	c, err := TLSConfig(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func aclPasswords() map[string]string {
	pw := map[string]string{}
	for n, v := range aclUsers {
		pw[n] = v[0]
	}
	return pw
}

// TestNoClientIDTakeoverMosquitto: with docs/mosquitto's configuration a
// device logging in on the device listener with its own password but
// another device's client id neither disconnects that device nor makes
// Mosquitto publish its will (use_username_as_clientid).
func TestNoClientIDTakeoverMosquitto(t *testing.T) {
	m := startMosquittoFleet(t, aclPasswords(), false)
	tc := tlsFor(t, m.ca.File, "", "")
	op := connect(t, m.opURL, "operator", "operator-secret", "")
	checkNoTakeover(t, op,
		takeoverLogin{url: m.devURL, user: "dev-b", pass: "dev-b-secret", id: "dev-b", tls: tc},
		takeoverLogin{url: m.devURL, user: "dev-a", pass: "dev-a-secret", id: "dev-b", tls: tc})

	// Operators keep free client ids on the loopback listener: two
	// commands at once (status --watch while publishing) do not close
	// each other.
	op2 := connect(t, m.opURL, "operator", "operator-secret", "")
	if err := wait(context.Background(), op.Publish(protocol.TopicPrefix+"sync/x", 1, false, []byte("x")), time.Minute); err != nil || !op.IsConnectionOpen() || !op2.IsConnectionOpen() {
		t.Errorf("a second operator connection on the loopback listener closed the first: %v", err)
	}
}

// TestNoClientIDTakeoverMosquittoCert: the same with client certificates
// (the configuration's commented cafile, require_certificate and
// use_identity_as_username lines): the CN is the user name and client id.
func TestNoClientIDTakeoverMosquittoCert(t *testing.T) {
	m := startMosquittoFleet(t, aclPasswords(), true)
	b := m.ca.Client("dev-b", "dev-b")
	a := m.ca.Client("dev-a", "dev-a")
	op := connect(t, m.opURL, "operator", "operator-secret", "")
	checkNoTakeover(t, op,
		takeoverLogin{url: m.devURL, user: "dev-b", id: "dev-b", tls: tlsFor(t, m.ca.File, b.Cert, b.Key)},
		takeoverLogin{url: m.devURL, user: "dev-a", id: "dev-b", tls: tlsFor(t, m.ca.File, a.Cert, a.Key)})
}

// TestNoClientIDTakeoverEmbedded: the embedded broker refuses a device
// whose client id is not its user name or certificate CN, before it looks
// at sessions, so the device with that id stays connected.
func TestNoClientIDTakeoverEmbedded(t *testing.T) {
	ca := testkit.NewCA(t, "", "embedded")
	srv := ca.Server("broker")
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), Users: writeUsers(t, t.TempDir(), aclUsers),
		TLSCert: srv.Cert, TLSKey: srv.Key, ClientCA: ca.File})
	opc, err := Connect(context.Background(), ClientOptions{Broker: b.URL(), CA: ca.File, Username: "operator", Password: "operator-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer opc.Disconnect(100)
	tc := tlsFor(t, ca.File, "", "")
	t.Run("password", func(t *testing.T) {
		checkNoTakeover(t, opc,
			takeoverLogin{url: b.URL(), user: "dev-b", pass: "dev-b-secret", id: "dev-b", tls: tc},
			takeoverLogin{url: b.URL(), user: "dev-a", pass: "dev-a-secret", id: "dev-b", tls: tc})
	})
	t.Run("certificate", func(t *testing.T) {
		cb := ca.Client("dev-b", "dev-b")
		cA := ca.Client("dev-a", "dev-a")
		checkNoTakeover(t, opc,
			takeoverLogin{url: b.URL(), user: "dev-b", id: "dev-b", tls: tlsFor(t, ca.File, cb.Cert, cb.Key)},
			takeoverLogin{url: b.URL(), user: "dev-a", id: "dev-b", tls: tlsFor(t, ca.File, cA.Cert, cA.Key)})
	})
}
