package fleet

import (
	"context"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// Retained chunks subscribed at QoS 0 come from the broker's own delivery
// (no copy per subscriber): every chunk arrives once, retained, with the
// signed bytes; a QoS 1 subscription keeps mochi's path and gets the same
// bytes.
func TestRetainedChunkDelivery(t *testing.T) {
	ctx := context.Background()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	r := makeBundle(t, t.TempDir(), "demo", "1.0.0", 1, 20*int(protocol.MinChunkSize)+17)
	op := connect(t, b.URL(), "", "", "op")
	if _, err := PublishBundle(ctx, op, r.path, PublishOptions{Keyring: r.kr, Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
	p := &r.m.Payload
	for _, qos := range []byte{0, 1} {
		before := b.chunks.sent.Load()
		c := connect(t, b.URL(), "", "", "dev-"+string('a'+qos))
		var mu sync.Mutex
		got := map[int]int{}
		var bad []string
		subs := map[string]byte{}
		for i := range p.Chunks {
			tp, _ := protocol.ChunkTopic("demo", p.SHA256, i)
			subs[tp] = qos
		}
		tok := c.SubscribeMultiple(subs, func(_ paho.Client, m paho.Message) {
			tp, err := protocol.ParseTopic(m.Topic())
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				bad = append(bad, err.Error())
			case !m.Retained():
				bad = append(bad, m.Topic()+" arrived without the retain flag")
			default:
				if err := protocol.VerifyChunk(p, tp.Index, m.Payload()); err != nil {
					bad = append(bad, err.Error())
				}
				got[tp.Index]++
			}
		})
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		testkit.Eventually(t, "every chunk", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(got) == len(p.Chunks)
		})
		time.Sleep(100 * time.Millisecond) // a duplicate would arrive by now
		mu.Lock()
		for i, n := range got {
			if n != 1 {
				t.Errorf("qos %d: chunk %d arrived %d times", qos, i, n)
			}
		}
		for _, s := range bad {
			t.Errorf("qos %d: %s", qos, s)
		}
		mu.Unlock()
		sent := b.chunks.sent.Load() - before
		if qos == 0 && sent != int64(len(p.Chunks)) {
			t.Errorf("qos 0: broker's chunk delivery sent %d chunks, want %d", sent, len(p.Chunks))
		}
		if qos == 1 && sent != 0 {
			t.Errorf("qos 1: broker's chunk delivery sent %d chunks, want 0 (mochi's path)", sent)
		}
	}
}
