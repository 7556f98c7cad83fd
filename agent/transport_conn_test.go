package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
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
