package agent

// Moving away from a broker that does not deliver. A clustered broker's
// node can serve a stale retained set (NATS: a node whose retained index
// lags the stream after another node died): the device sees the release
// but its chunks never come. With several brokers configured, a download
// that stalls there makes the device drop that connection and dial the
// others first; the chunks already downloaded are kept (bbolt bitmap), so
// it goes on where it was.

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// brokerSwitch is the dial-side state of a switch: which broker to pass
// over once, and the connection to close to leave the current one. Used
// from paho's goroutines and the transport loop.
type brokerSwitch struct {
	mu      sync.Mutex
	skip    string   // broker key to pass over on the next dial pass ("" none)
	current net.Conn // the connection paho uses now
	key     string   // its broker key
}

// brokerKey identifies a broker URL without its credentials.
func brokerKey(u *url.URL) string { return u.Scheme + "://" + u.Host }

// dialBroker is paho's open-connection function: it dials tcp:// and
// ssl:// (tls://, mqtts://) brokers as paho does without a proxy, passes
// over the broker being left once, and remembers the connection so that
// switchBroker can close it.
func (t *mqttTransport) dialBroker(u *url.URL, o paho.ClientOptions) (net.Conn, error) {
	key := brokerKey(u)
	sw := &t.conn.sw
	sw.mu.Lock()
	if sw.skip != "" && sw.skip == key {
		sw.skip = "" // once: when every other broker fails, come back to it
		sw.mu.Unlock()
		return nil, fmt.Errorf("passed over once: downloads stalled on this broker")
	}
	sw.mu.Unlock()
	d := o.Dialer
	if d == nil {
		d = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	var conn net.Conn
	var err error
	switch u.Scheme {
	case "tcp", "mqtt":
		conn, err = d.Dial("tcp", u.Host)
	case "ssl", "tls", "mqtts", "tcps":
		conf := o.TLSConfig
		if conf == nil {
			conf = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		conn, err = tls.DialWithDialer(d, "tcp", u.Host, conf)
	default:
		return nil, fmt.Errorf("broker URL scheme %q is not supported (use tcp:// or ssl://)", u.Scheme)
	}
	if err != nil {
		return nil, err
	}
	sw.mu.Lock()
	sw.current, sw.key = conn, key
	sw.mu.Unlock()
	return conn, nil
}

// switchBroker leaves the connected broker for the others (why says what
// went wrong there); false when there is no other broker to go to.
func (t *mqttTransport) switchBroker(why string) bool {
	if len(t.conn.servers) < 2 || !t.connected {
		return false
	}
	sw := &t.conn.sw
	sw.mu.Lock()
	conn, key := sw.current, sw.key
	sw.skip = key
	sw.mu.Unlock()
	if conn == nil {
		return false
	}
	t.logf("mqtt: %s on %s; moving to another of the %d brokers (what was downloaded is kept)", why, t.conn.broker, len(t.conn.servers))
	conn.Close() // paho sees the connection lost and reconnects, passing over this broker once
	return true
}
