package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

// TestConfigBrokerURLs: broker.urls lists several brokers; broker.url
// still works; both, none, too many, duplicates, a bad one among good
// ones, and a mix of plain and encrypted are refused with a message that
// names the entry and says what to do.
func TestConfigBrokerURLs(t *testing.T) {
	good := "device_id: d\ndata_dir: /var/lib/edgefleet\ntrusted_keys: [/k.pub]\n"
	cfg, err := ParseConfig([]byte(good + "broker: {urls: [tcp://a:1883, tcp://b:1883, 'tcp://c:1883']}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Broker.Servers(); !slices.Equal(got, []string{"tcp://a:1883", "tcp://b:1883", "tcp://c:1883"}) || cfg.Broker.Channel != "stable" {
		t.Fatalf("servers %v channel %q", got, cfg.Broker.Channel)
	}
	one, err := ParseConfig([]byte(good + "broker: {url: tcp://a:1883}\n"))
	if err != nil || !slices.Equal(one.Broker.Servers(), []string{"tcp://a:1883"}) {
		t.Fatalf("broker.url alone: %v %v", err, one)
	}
	if _, err := ParseConfig([]byte(good + "broker: {urls: [ssl://a:8883, mqtts://b:8883], ca: /ca.pem}\n")); err != nil {
		t.Fatalf("encrypted urls with a CA: %v", err)
	}
	many := make([]string, MaxBrokerURLs+1)
	for i := range many {
		many[i] = fmt.Sprintf("tcp://b%d:1883", i)
	}
	for _, bad := range []struct{ yaml, says string }{
		{good + "broker: {url: tcp://a:1883, urls: [tcp://b:1883]}\n", "both set"},
		{good + "broker: {urls: []}\n", "broker.url is missing"},
		{good + "broker: {urls: [" + strings.Join(many, ", ") + "]}\n", "at most 16"},
		{good + "broker: {urls: [tcp://a:1883, tcp://a:1883]}\n", "broker.urls[1]: tcp://a:1883 is listed twice"},
		{good + "broker: {urls: [tcp://a:1883, http://b:80]}\n", "broker.urls[1] \"http://b:80\": scheme"},
		{good + "broker: {urls: [tcp://a:1883, 'tcp://:1883']}\n", "broker.urls[1] \"tcp://:1883\": no host"},
		{good + "broker: {urls: [tcp://a:1883, 'tcp://b:99999']}\n", "port \"99999\""},
		{good + "broker: {urls: [ssl://a:8883, tcp://b:1883]}\n", "mixes encrypted"},
		{good + "broker: {urls: [tcp://a:1883, tcp://b:1883], ca: /ca.pem}\n", "use ssl://host:8883 URLs"},
	} {
		_, err := ParseConfig([]byte(bad.yaml))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("config %q: %v, want ErrConfig saying %q", bad.yaml, err, bad.says)
		}
	}
}

// TestBrokerOrderSpreads: each device keeps one order, every order is a
// permutation of the list, and a fleet spreads: the devices whose first
// broker is down move to the others in roughly even shares.
func TestBrokerOrderSpreads(t *testing.T) {
	urls := []string{"tcp://a:1883", "tcp://b:1883", "tcp://c:1883"}
	first := map[string]int{}
	second := map[string]int{} // of the devices that start on a
	const n = 3000
	for i := range n {
		id := fmt.Sprintf("dev-%d", i)
		o := brokerOrder(id, urls)
		if !slices.Equal(o, brokerOrder(id, urls)) {
			t.Fatalf("%s: order changes between calls", id)
		}
		s := slices.Clone(o)
		slices.Sort(s)
		if !slices.Equal(s, urls) {
			t.Fatalf("%s: %v is not a permutation of %v", id, o, urls)
		}
		first[o[0]]++
		if o[0] == urls[0] {
			second[o[1]]++
		}
	}
	if !slices.Equal(urls, []string{"tcp://a:1883", "tcp://b:1883", "tcp://c:1883"}) {
		t.Fatal("brokerOrder changed its argument")
	}
	for _, u := range urls {
		if first[u] < n/3*8/10 {
			t.Errorf("only %d of %d devices start on %s: %v", first[u], n, u, first)
		}
	}
	if a := first[urls[0]]; second[urls[1]] < a/2*8/10 || second[urls[2]] < a/2*8/10 {
		t.Errorf("the devices of a failed first broker do not spread over the others: %v", second)
	}
	t.Logf("first broker: %v; after a fails: %v", first, second)
}

func TestRedactURL(t *testing.T) {
	if got := redactURL("tcp://user:secret@b:1883"); strings.Contains(got, "secret") || !strings.Contains(got, "b:1883") {
		t.Fatalf("redactURL leaks or loses: %q", got)
	}
}

// lastConnected is the broker named by the device's last "connected to"
// log line.
func lastConnected(log *syncBuffer) string {
	s := log.String()
	i := strings.LastIndex(s, "mqtt: connected to ")
	if i < 0 {
		return ""
	}
	line, _, _ := strings.Cut(s[i+len("mqtt: connected to "):], "\n")
	url, _, _ := strings.Cut(line, " ")
	return url
}

// TestMQTTBrokerFailover: three real brokers on loopback ports; agents
// configured with all three spread over them and install a release. The
// broker a device is on is closed; a new release published on the other
// two reaches every device, the moved ones included, and their logs say
// where they went.
func TestMQTTBrokerFailover(t *testing.T) {
	k := newKit(t)
	var brokers []*fleet.Broker
	var urls []string
	var ops []paho.Client
	for range 3 {
		b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
		brokers = append(brokers, b)
		urls = append(urls, b.URL())
		ops = append(ops, operator(t, b.URL()))
	}
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	for _, op := range ops {
		publish(t, op, k, v1, "")
	}
	type dev struct {
		d   *mqttDevice
		log *syncBuffer
	}
	var devs []dev
	for i := range 6 {
		cfg := mqttConfig(t, k, fmt.Sprintf("dev-fo-%d", i), urls[0])
		cfg.Broker.URL, cfg.Broker.URLs = "", urls
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		d, log := startMQTTDeviceLogged(t, cfg)
		defer d.stop()
		devs = append(devs, dev{d, log})
	}
	on := map[string]int{}
	for _, d := range devs {
		eventually(t, d.d.id+" installs 1.0.0", func() bool { return installedIs(d.d, "1.0.0", StateCommitted) })
		on[lastConnected(d.log)]++
	}
	t.Logf("devices per broker: %v", on)
	// Close the broker the first device is on.
	dead := lastConnected(devs[0].log)
	k0 := slices.Index(urls, dead)
	if k0 < 0 {
		t.Fatalf("device 0 says it is connected to %q, not one of %v", dead, urls)
	}
	closed := time.Now()
	brokers[k0].Close()
	var views []*fleet.FleetView
	for i, op := range ops {
		if i != k0 {
			publish(t, op, k, v2, "")
			views = append(views, fleetView(t, op))
		}
	}
	for _, d := range devs {
		eventually(t, d.d.id+" installs 2.0.0 through a surviving broker", func() bool { return installedIs(d.d, "2.0.0", StateCommitted) })
		now := lastConnected(d.log)
		if now == dead || !slices.Contains(urls, now) {
			t.Errorf("%s says it is connected to %q after %s closed", d.d.id, now, dead)
		}
		// Its status, read through the broker it is on, names that broker.
		eventually(t, d.d.id+"'s status names "+now, func() bool {
			for _, v := range views {
				for _, s := range v.Devices() {
					if s.Device == d.d.id && s.Broker == now && len(s.Apps) == 1 && s.Apps[0].Version == "2.0.0" {
						return true
					}
				}
			}
			return false
		})
	}
	t.Logf("all %d devices on 2.0.0 %s after %s closed (%d were on it)", len(devs), time.Since(closed).Round(time.Millisecond), dead, on[dead])
	if !strings.Contains(devs[0].log.String(), "connection to "+dead+" lost") {
		t.Errorf("device 0's log does not say which broker it lost:\n%s", devs[0].log)
	}
}

// TestMQTTStatusConfirmed: a retained status or presence publish that the
// broker does not acknowledge within the confirm timeout is sent again,
// and that is logged once per connection, not once per re-send. A real
// broker, with a timeout shorter than its PUBACK takes.
func TestMQTTStatusConfirmed(t *testing.T) {
	mqttConfirmTimeout.Store(int64(time.Nanosecond))
	t.Cleanup(func() { mqttConfirmTimeout.Store(int64(DefaultConfirmTimeout)) })
	k := newKit(t)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	var statuses atomic.Int64
	topic, _ := protocol.StatusTopic("dev-confirm")
	if tok := op.Subscribe(topic, 1, func(paho.Client, paho.Message) { statuses.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	dev, log := startMQTTDeviceLogged(t, mqttConfig(t, k, "dev-confirm", b.URL()))
	defer dev.stop()
	eventually(t, "an unconfirmed status is sent again (3 times or more)", func() bool { return statuses.Load() >= 3 })
	mqttConfirmTimeout.Store(int64(DefaultConfirmTimeout))
	if n := strings.Count(log.String(), "was not confirmed"); n != 1 {
		t.Errorf("the unconfirmed publish was logged %d times on one connection, want once:\n%s", n, log)
	}
	if !strings.Contains(log.String(), "not acknowledged by the broker within") {
		t.Errorf("the log does not say why:\n%s", log)
	}
}
