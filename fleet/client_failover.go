package fleet

import (
	"fmt"
	"net/url"
	"strings"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// MaxBrokers is the most broker URLs an operator command accepts.
const MaxBrokers = 16

// Brokers returns the broker URLs of o.Broker, which may list several
// separated by commas ("tcp://a:1883,tcp://b:1883"), in the given order,
// blanks dropped.
func (o *ClientOptions) Brokers() []string {
	var out []string
	for _, s := range strings.Split(o.Broker, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// checkBrokers validates the broker list: each URL, no duplicates, at most
// MaxBrokers, and TLS flags only with encrypted URLs.
func (o *ClientOptions) checkBrokers() error {
	list := o.Brokers()
	if len(list) == 0 {
		return fmt.Errorf("no broker given: use --broker tcp://host:1883 (several: --broker tcp://a:1883,tcp://b:1883 or --broker repeated)")
	}
	if len(list) > MaxBrokers {
		return fmt.Errorf("%d brokers given; at most %d", len(list), MaxBrokers)
	}
	seen := map[string]bool{}
	for _, b := range list {
		if !strings.HasPrefix(b, "tcp://") && !strings.HasPrefix(b, "ssl://") && !strings.HasPrefix(b, "tls://") {
			return fmt.Errorf("broker URL %q: want tcp://host:port or ssl://host:port", b)
		}
		if u, err := url.Parse(b); err != nil || u.Hostname() == "" {
			return fmt.Errorf("broker URL %q: no host; want tcp://host:port or ssl://host:port", b)
		}
		if seen[b] {
			return fmt.Errorf("broker URL %s is given twice", b)
		}
		seen[b] = true
		if strings.HasPrefix(b, "tcp://") && (o.CA != "" || o.Cert != "") {
			// paho ignores TLS settings for tcp://: the connection (and any
			// password) would go in clear.
			return fmt.Errorf("broker URL %s is plain tcp:// but --ca/--cert are set; use ssl://host:8883 for TLS", b)
		}
	}
	return nil
}

// brokerAttempts collects why each broker failed during one Connect, for
// an error that names them all.
type brokerAttempts struct {
	mu     sync.Mutex
	failed []string
}

func (a *brokerAttempts) handler(_ paho.Client, n paho.ConnectionNotification) {
	if f, ok := n.(paho.ConnectionNotificationBrokerFailed); ok {
		u := *f.Broker
		u.User = nil
		a.mu.Lock()
		a.failed = append(a.failed, fmt.Sprintf("%s: %v", u.String(), f.Reason))
		a.mu.Unlock()
	}
}

func (a *brokerAttempts) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.failed, "; ")
}
