package fleet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// A last will is a publish the broker makes on the client's behalf when the
// connection drops. If the will's topic escapes the ACL, a device can clear
// the fleet's retained release (an empty retained will), replace it with an
// older signed one, or write another device's status or desired release —
// simply by connecting with such a will and pulling the cable.
func TestWillObeysACLEmbedded(t *testing.T) {
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir(), Users: writeUsers(t, dir, aclUsers)})
	willMatrix(t, b.URL())
}

func TestWillObeysACLMosquitto(t *testing.T) {
	pw := map[string]string{}
	for n, v := range aclUsers {
		pw[n] = v[0]
	}
	willMatrix(t, startMosquitto(t, pw))
}

func willMatrix(t *testing.T, url string) {
	ctx := context.Background()
	r := makeBundle(t, t.TempDir(), "hello", "1.0.0", 1, 10_000)
	op := connect(t, url, "operator", "operator-secret", "")
	if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
	if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Device: "dev-b"}); err != nil {
		t.Fatal(err)
	}
	relTopic, _ := protocol.ReleaseTopic("stable", "hello", "linux-amd64")
	desiredB, _ := protocol.DesiredTopic("dev-b", "hello")
	statusA, _ := protocol.StatusTopic("dev-a")
	statusB, _ := protocol.StatusTopic("dev-b")

	// The operator watches every write live.
	var mu sync.Mutex
	var seen []string
	syncWill := make(chan struct{})
	var once sync.Once
	if err := wait(ctx, op.Subscribe(protocol.TopicPrefix+"#", 1, func(_ paho.Client, m paho.Message) {
		if m.Retained() {
			return // what was there before
		}
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s=%q", m.Topic(), m.Payload()))
		mu.Unlock()
		if m.Topic() == statusA && string(m.Payload()) == "sync" {
			once.Do(func() { close(syncWill) })
		}
	}), time.Minute); err != nil {
		t.Fatal(err)
	}

	addr := strings.TrimPrefix(url, "tcp://")
	for _, topic := range []string{relTopic, desiredB, statusB} {
		for _, payload := range []string{"", "evil"} {
			// Refused at CONNECT (the embedded broker) or dropped at
			// disconnect: either way nothing may be written.
			rawWillConnect(t, addr, "dev-a", "dev-a-secret", topic, payload)
		}
	}
	// Sync: the same client id with an allowed will; the broker handles the
	// earlier connections of dev-a before this one.
	if rc := rawWillConnect(t, addr, "dev-a", "dev-a-secret", statusA, "sync"); rc != 0 {
		t.Fatalf("a device with a will on its own status was refused (CONNACK %d); the agent's offline status needs it", rc)
	}
	select {
	case <-syncWill:
	case <-time.After(time.Minute):
		t.Fatal("the allowed will on dev-a's own status never arrived")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if !strings.HasPrefix(s, statusA+"=") {
			t.Errorf("device dev-a wrote through its last will: %s", s)
		}
	}
	snap, err := Snapshot(ctx, op, []string{protocol.TopicPrefix + "#"})
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{relTopic, desiredB} {
		if e, err := protocol.ParseEnvelope(snap[topic]); err != nil {
			t.Errorf("retained release on %s destroyed through a device's will: %v", topic, err)
		} else if _, err := e.Open(r.kr); err != nil {
			t.Errorf("retained release on %s no longer verifies: %v", topic, err)
		}
	}
	if v, ok := snap[statusB]; ok {
		t.Errorf("dev-a wrote dev-b's status through its will: %q", v)
	}
}

// rawWillConnect connects as user (client id = user) with a retained QoS 1
// will, reads the CONNACK and drops the TCP connection without DISCONNECT,
// which makes the broker publish the will. It returns the CONNACK code (or
// 255 when the broker closed the connection without one).
func rawWillConnect(t *testing.T, addr, user, pass, willTopic, willPayload string) byte {
	t.Helper()
	return sendConnect(t, addr, connectPacket(user, user, pass, willTopic, willPayload))
}

// connectPacket builds an MQTT 3.1.1 CONNECT (clean session, keepalive
// 60 s, user name and password) with a retained QoS 1 will when willTopic
// is set. Hand-made because paho retries a refused CONNECT as MQTT 3.1
// and cannot send an arbitrary will.
func connectPacket(id, user, pass, willTopic, willPayload string) []byte {
	str := func(b *bytes.Buffer, s string) {
		binary.Write(b, binary.BigEndian, uint16(len(s)))
		b.WriteString(s)
	}
	flags := byte(0x80 | 0x40 | 0x02) // user, password, clean
	if willTopic != "" {
		flags |= 0x20 | 1<<3 | 0x04 // will retain, will QoS 1, will
	}
	var body bytes.Buffer
	str(&body, "MQTT")
	body.WriteByte(4) // 3.1.1
	body.WriteByte(flags)
	binary.Write(&body, binary.BigEndian, uint16(60))
	str(&body, id)
	if willTopic != "" {
		str(&body, willTopic)
		str(&body, willPayload)
	}
	str(&body, user)
	str(&body, pass)
	var pkt bytes.Buffer
	pkt.WriteByte(0x10)
	for n := body.Len(); ; {
		d := byte(n % 128)
		if n /= 128; n > 0 {
			d |= 0x80
		}
		pkt.WriteByte(d)
		if n == 0 {
			break
		}
	}
	pkt.Write(body.Bytes())
	return pkt.Bytes()
}

// sendConnect sends pkt on a new connection to addr and returns the
// CONNACK's return code, or 255 when the broker closed the connection
// without one. The connection is closed on return.
func sendConnect(t *testing.T, addr string, pkt []byte) byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 255
	}
	if ack[0] != 0x20 {
		t.Fatalf("expected a CONNACK, got packet type %#x", ack[0])
	}
	return ack[3]
}
