package agent

// The MQTT connection itself: which brokers, in which order, which one the
// agent is connected to, why a connection attempt failed (logged without a
// flood), and the confirmation of the publishes that matter (the retained
// status and presence). The release feed, downloads and installs are in
// transport_mqtt.go.

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// DefaultConfirmTimeout is how long the broker has to acknowledge a
// retained status or presence publish (QoS 1 PUBACK) before it is sent
// again.
const DefaultConfirmTimeout = 30 * time.Second

// mqttConfirmTimeout is DefaultConfirmTimeout; tests change it (atomic:
// the transports read it while a test sets it).
var mqttConfirmTimeout atomic.Int64

func init() { mqttConfirmTimeout.Store(int64(DefaultConfirmTimeout)) }

// mqttConn is the transport's connection bookkeeping.
type mqttConn struct {
	// servers are the broker URLs in this device's order (brokerOrder).
	servers []string
	// dialing is the broker paho tries now (set from paho's goroutine).
	dialing atomic.Pointer[string]
	// broker is the broker of the open connection ("" when none).
	broker string
	// failLogged: a connection failure message → when it was logged.
	failLogged map[string]time.Time
	// confirmLogged: an unconfirmed publish was logged on this connection.
	confirmLogged bool
	// presenceDue: the online presence was not confirmed; housekeeping
	// sends it again (at most once a tick, never in a tight loop).
	presenceDue bool
	// sw moves the device off a broker that does not deliver
	// (transport_switch.go).
	sw brokerSwitch
}

// brokerOrder is the order in which a device tries its brokers: a shuffle
// seeded by the device id. Every device keeps its own order across
// restarts (its logs are reproducible, and it goes back to the same broker
// first), while a fleet spreads over the brokers: when one node fails, its
// devices move to the others in even shares instead of all landing on the
// next URL of a common list.
func brokerOrder(deviceID string, urls []string) []string {
	out := append([]string(nil), urls...)
	h := fnv.New64a()
	h.Write([]byte(deviceID))
	seed := h.Sum64()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// redactURL is a broker URL fit for a log or a status: no credentials.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable broker URL)"
	}
	u.User = nil
	return u.String()
}

// addBrokers adds this device's brokers to o in brokerOrder. paho walks
// the list in that order on every connection attempt (the first and
// every reconnect) and takes the first that accepts the connection.
// The connection notification handler records which broker paho dials
// and reports failures to the loop.
func (t *mqttTransport) addBrokers(o *paho.ClientOptions) {
	t.conn.servers = brokerOrder(t.cfg.DeviceID, t.cfg.Broker.Servers())
	t.conn.failLogged = map[string]time.Time{}
	for _, s := range t.conn.servers {
		o.AddBroker(s)
	}
	several := len(t.conn.servers) > 1
	if several {
		o.SetCustomOpenConnectionFn(t.dialBroker)
	}
	o.SetConnectionNotificationHandler(func(_ paho.Client, n paho.ConnectionNotification) {
		switch n := n.(type) {
		case paho.ConnectionNotificationBroker:
			s := redactURL(n.Broker.String())
			t.conn.dialing.Store(&s)
		case paho.ConnectionNotificationBrokerFailed:
			if several { // with one broker, the Failed notification says it all
				t.post(mqttEvent{kind: "connfail", err: fmt.Errorf("%s: %w", redactURL(n.Broker.String()), n.Reason)})
			}
		case paho.ConnectionNotificationFailed:
			t.post(mqttEvent{kind: "connfail", err: n.Reason})
		}
	})
}

// dialed is the broker paho tried last: on a connect, the one it is
// connected to.
func (t *mqttTransport) dialed() string {
	if p := t.conn.dialing.Load(); p != nil {
		return *p
	}
	if len(t.conn.servers) > 0 {
		return redactURL(t.conn.servers[0])
	}
	return ""
}

// brokerList names the brokers for the connecting log line.
func (t *mqttTransport) brokerList() string {
	if len(t.conn.servers) == 1 {
		return redactURL(t.conn.servers[0])
	}
	names := make([]string, len(t.conn.servers))
	for i, s := range t.conn.servers {
		names[i] = redactURL(s)
	}
	return fmt.Sprintf("one of %d brokers (in this order: %s)", len(names), strings.Join(names, ", "))
}

// onConnected notes the broker of the new connection (broker: the one
// paho had dialled when it called the connect handler; "" when the loop
// noticed the connection itself) and returns it for the log.
func (t *mqttTransport) onConnected(broker string) string {
	if broker == "" {
		broker = t.dialed()
	}
	t.conn.broker = broker
	t.conn.confirmLogged = false
	t.conn.presenceDue = false // the connect publishes it
	clear(t.conn.failLogged)
	if len(t.conn.servers) > 1 {
		return fmt.Sprintf("%s (of %d brokers)", t.conn.broker, len(t.conn.servers))
	}
	return t.conn.broker
}

// statusBroker is the status's broker field: the connected broker when
// the device has several ("" with one: nothing to tell).
func (t *mqttTransport) statusBroker() string {
	if len(t.conn.servers) < 2 {
		return ""
	}
	return clip(t.conn.broker, 200)
}

// connFailed logs a failed connection attempt. paho retries with backoff
// and, with several brokers, walks the list each time: each distinct
// reason (a broker down, refused credentials) is logged once and again
// every mqttConnLogEvery while it lasts, so two dead brokers do not
// alternate into a flood.
func (t *mqttTransport) connFailed(err error) {
	msg := fmt.Sprint(err)
	if at, ok := t.conn.failLogged[msg]; ok && time.Since(at) < mqttConnLogEvery {
		return
	}
	if len(t.conn.failLogged) > 64 {
		clear(t.conn.failLogged) // reasons with changing text (ports, addresses)
	}
	t.conn.failLogged[msg] = time.Now()
	t.connErr, t.connErrAt = msg, time.Now()
	which := fmt.Sprintf("cannot connect to %s", t.brokerList())
	next := "retrying"
	if len(t.conn.servers) > 1 {
		which, next = "cannot connect", "trying the other brokers"
	}
	t.logf("mqtt: %s as client id %q: %s; %s (check broker.url(s), broker.ca/cert/key or broker.username/password, and that the broker accepts this device id as a client id)", which, t.cfg.DeviceID, msg, next)
}

// confirm waits, off the event loop, for the broker to acknowledge a
// publish that matters (what is "status" or "presence") and posts a
// "published" event when it failed or was not acknowledged within
// mqttConfirmTimeout; the loop then sends it again (published).
func (t *mqttTransport) confirm(what string, tok paho.Token) {
	timeout := time.Duration(mqttConfirmTimeout.Load())
	go func() {
		var err error
		if !tok.WaitTimeout(timeout) {
			err = fmt.Errorf("not acknowledged by the broker within %s", timeout)
		} else if err = tok.Error(); err == nil {
			return
		}
		t.post(mqttEvent{kind: "published", topic: what, err: err})
	}()
}

// published handles a publish that was not confirmed: the status (with
// the state of that moment) and the presence are sent again at the next
// housekeeping tick (resend). Logged once per connection.
func (t *mqttTransport) published(what string, err error) {
	if !t.connected {
		return // the next connection publishes both anyway
	}
	if !t.conn.confirmLogged {
		t.conn.confirmLogged = true
		t.logf("mqtt: the %s publish to %s was not confirmed (%v); sending it again (logged once per connection)", what, t.conn.broker, err)
	}
	switch what {
	case "status":
		t.lastStatus = "" // publishStatus sends it again
	case "presence":
		t.conn.presenceDue = true
	}
}

// resend sends the online presence again when it was not confirmed
// (housekeeping calls it; the status is resent by publishStatus).
func (t *mqttTransport) resend() {
	if t.connected && t.conn.presenceDue {
		t.conn.presenceDue = false
		t.confirm("presence", t.client.Publish(t.presenceTopic, 1, true, t.presenceBytes(true)))
	}
}

var errNoBroker = errors.New("broker.url or broker.urls is empty; set it to tcp://host:1883 or ssl://host:8883")
