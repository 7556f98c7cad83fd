package fleet

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestPublishFailoverMovesToNextBroker: the broker in use dies halfway
// through a publish; PublishFailover connects to the next broker of the
// list (skipping the one already known dead, which it tries last) and
// publishes the whole release there: envelope and every chunk.
func TestPublishFailoverMovesToNextBroker(t *testing.T) {
	dir := t.TempDir()
	r := makeBundle(t, dir, "hello", "1.0.0", 1, 400_000)
	gone := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	dead := gone.URL()
	gone.Close()
	a := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	co := ClientOptions{Broker: strings.Join([]string{dead, a.URL(), b.URL()}, ",")}
	c, err := Connect(context.Background(), co)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Disconnect(100) }()
	if got := ConnectedBroker(c); got != a.URL() {
		t.Fatalf("connected to %q, want %s (the first live broker)", got, a.URL())
	}
	var once sync.Once
	var switches []string
	res, err := PublishFailover(context.Background(), &c, co, r.path, PublishOptions{Keyring: r.kr, Channel: "stable", InFlight: 2,
		Progress: func(done, total int64) {
			if done >= total/2 {
				once.Do(func() { go a.Close() })
			}
		}}, func(from string, why error) { switches = append(switches, from+": "+why.Error()) })
	if err != nil {
		t.Fatalf("publish with failover: %v (switches %q)", err, switches)
	}
	if len(switches) != 1 || !strings.HasPrefix(switches[0], a.URL()+": ") {
		t.Fatalf("switches %q, want one away from %s", switches, a.URL())
	}
	if got := ConnectedBroker(c); got != b.URL() {
		t.Fatalf("after the failover connected to %q, want %s", got, b.URL())
	}
	check := connect(t, b.URL(), "", "", "")
	defer check.Disconnect(100)
	_, payload := snapshotRelease(t, check, res.Topic, r)
	if !bytes.Equal(payload, r.payload) {
		t.Fatalf("the next broker holds %d payload bytes, want the %d published", len(payload), len(r.payload))
	}
}

// TestPublishFailoverKeepsBundleFaults: a bundle that fails verification
// is the bundle's fault: no other broker is tried, and the error says why.
func TestPublishFailoverKeepsBundleFaults(t *testing.T) {
	dir := t.TempDir()
	r := makeBundle(t, dir, "hello", "1.0.0", 1, 20_000)
	raw, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-10] ^= 0xff
	writeFile(t, r.path, raw)
	a := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	co := ClientOptions{Broker: a.URL() + "," + b.URL()}
	c, err := Connect(context.Background(), co)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	orig := c
	_, err = PublishFailover(context.Background(), &c, co, r.path, PublishOptions{Keyring: r.kr, Channel: "stable"},
		func(from string, why error) { t.Errorf("moved away from %s for a bundle fault: %v", from, why) })
	if err == nil || !strings.Contains(err.Error(), "not publishing") {
		t.Fatalf("tampered bundle: %v, want a refusal", err)
	}
	if c != paho.Client(orig) {
		t.Fatal("the connection was replaced for a bundle fault")
	}
}
