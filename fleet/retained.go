package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// syncTopicPrefix is where an operator client sends itself a marker: MQTT
// has no "end of retained messages", but a broker delivers the retained
// messages of a subscription before anything published after the SUBACK on
// the same connection, so the marker's arrival means "all retained seen".
const syncTopicPrefix = protocol.TopicPrefix + "sync/"

// Subscribe subscribes to filters, handing every message (retained ones
// first) to fn on paho's single ordered delivery goroutine; fn must not
// block for long. It returns once the retained messages that existed at
// subscription time have been handed to fn. Messages keep flowing to fn
// until the client disconnects or the filters are unsubscribed.
func Subscribe(ctx context.Context, c paho.Client, filters []string, fn func(topic string, payload []byte)) error {
	handler := func(_ paho.Client, m paho.Message) {
		if !strings.HasPrefix(m.Topic(), syncTopicPrefix) {
			fn(m.Topic(), m.Payload())
		}
	}
	// Subscriptions use QoS 0: everything that matters is retained and comes
	// again on the next subscription, and mochi-mqtt v2.7.9 shares packet ids
	// between the two directions of a connection, so a QoS 1 delivery and a
	// QoS 1 publish from the same client can clobber each other.
	subs := map[string]byte{}
	for _, f := range filters {
		subs[f] = 0
	}
	if err := wait(ctx, c.SubscribeMultiple(subs, handler), time.Minute); err != nil {
		return fmt.Errorf("subscribe %v: %w", filters, err)
	}
	var b [8]byte
	rand.Read(b[:])
	marker := syncTopicPrefix + hex.EncodeToString(b[:])
	done := make(chan struct{})
	if err := wait(ctx, c.Subscribe(marker, 0, func(paho.Client, paho.Message) {
		select {
		case <-done:
		default:
			close(done)
		}
	}), time.Minute); err != nil {
		return fmt.Errorf("subscribe %s: %w", marker, err)
	}
	defer c.Unsubscribe(marker)
	// QoS 0, sent again every 2 s until it comes back: a QoS 1 publish
	// goes through NATS's JetStream, which under load drops the whole
	// connection when it does not acknowledge in time; a lost QoS 0
	// marker only costs a resend (any copy ends the wait).
	giveUp := time.After(time.Minute)
	resend := time.NewTicker(2 * time.Second)
	defer resend.Stop()
	for {
		if err := wait(ctx, c.Publish(marker, 0, false, []byte("sync")), time.Minute); err != nil {
			return fmt.Errorf("publish %s: %w", marker, err)
		}
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-giveUp:
			return fmt.Errorf("the broker did not echo the sync marker within a minute; is the operator allowed to read and write %s#?", syncTopicPrefix)
		case <-resend.C:
		}
	}
}

// Snapshot returns the retained messages matching filters, by topic.
func Snapshot(ctx context.Context, c paho.Client, filters []string) (map[string][]byte, error) {
	var mu sync.Mutex
	got := map[string][]byte{}
	err := Subscribe(ctx, c, filters, func(topic string, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		if got != nil && !strings.HasPrefix(topic, syncTopicPrefix) {
			got[topic] = payload
		}
	})
	wait(ctx, c.Unsubscribe(filters...), 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	out := got
	got = nil
	if err != nil {
		return nil, err
	}
	return out, nil
}
