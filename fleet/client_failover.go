package fleet

import (
	"context"
	"errors"
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
	trying string // the broker paho tried last: the one in use once connected
}

func (a *brokerAttempts) handler(_ paho.Client, n paho.ConnectionNotification) {
	if b, ok := n.(paho.ConnectionNotificationBroker); ok && b.Broker != nil {
		u := *b.Broker
		u.User = nil
		a.mu.Lock()
		a.trying = u.String()
		a.mu.Unlock()
	}
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

// connectedTo remembers which of its brokers each operator connection
// accepted (paho does not say), for PublishFailover.
var connectedTo sync.Map // paho.Client → string

// ConnectedBroker returns the URL (without credentials) of the broker c,
// made by Connect, is connected to; "" when unknown.
func ConnectedBroker(c paho.Client) string {
	v, _ := connectedTo.Load(c)
	s, _ := v.(string)
	return s
}

// brokerTrouble reports whether err, returned while using c, is the
// broker's fault rather than the bundle's: the connection dropped, or the
// broker lost chunks it had acknowledged.
func brokerTrouble(c paho.Client, err error) bool {
	return errors.Is(err, ErrChunksLost) || !c.IsConnectionOpen()
}

// PublishFailover publishes the bundle at path like PublishBundle on *c.
// When that fails through the broker's fault (the connection dropped, or
// the broker did not keep the chunks it acknowledged) and co lists other
// brokers, it connects to the next one (the failed broker tried last) and
// publishes again; retained publishes are idempotent, so a release is
// never half on one broker and whole on another. *c becomes the new
// connection; onSwitch, when set, hears each move. A bundle's own fault
// (a bad signature, a changed file) is returned at once.
func PublishFailover(ctx context.Context, c *paho.Client, co ClientOptions, path string, po PublishOptions, onSwitch func(from string, why error)) (*PublishResult, error) {
	brokers := co.Brokers()
	var errs []string
	for attempt := 0; ; attempt++ {
		res, err := PublishBundle(ctx, *c, path, po)
		if err == nil || ctx.Err() != nil || !brokerTrouble(*c, err) {
			return res, err
		}
		from := ConnectedBroker(*c)
		errs = append(errs, fmt.Sprintf("%s: %v", from, err))
		if attempt+1 >= len(brokers) {
			if len(brokers) > 1 {
				return nil, fmt.Errorf("publish %s failed on each of %d brokers: %s", path, len(brokers), strings.Join(errs, "; "))
			}
			return nil, err
		}
		if onSwitch != nil {
			onSwitch(from, err)
		}
		(*c).Disconnect(0)
		connectedTo.Delete(*c)
		next := co
		next.Broker = strings.Join(rotateAfter(brokers, from), ",")
		nc, cerr := Connect(ctx, next)
		if cerr != nil {
			return nil, fmt.Errorf("publish %s: %s; then: %w", path, strings.Join(errs, "; "), cerr)
		}
		*c = nc
	}
}

// rotateAfter returns list starting after failed, with failed last (list
// unchanged when failed is not in it).
func rotateAfter(list []string, failed string) []string {
	for i, b := range list {
		if stripUser(b) == failed {
			out := append(append([]string{}, list[i+1:]...), list[:i]...)
			return append(out, b)
		}
	}
	return list
}

func stripUser(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	u.User = nil
	return u.String()
}
