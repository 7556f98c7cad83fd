package agent

// Where chunks come from. A download asks a chunkSource for chunk i of a
// payload and gets verified bytes or a reason; the part file, the bbolt
// chunk bitmap (resume) and the choice between sources belong to the
// download (transport_download.go). Sources: HTTP(S) mirrors
// (transport_mirror.go) and the broker's retained chunks (mqttChunks
// below; the transport's own MQTT path subscribes to the same topics with
// a window, in the event loop); later a local file and deltas.

import (
	"context"
	"errors"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

var (
	// errChunkMissing: the source does not have the chunk (404, or the
	// broker sent nothing).
	errChunkMissing = errors.New("chunk missing")
	// errChunkCorrupt: the source served bytes that are not the signed
	// chunk (wrong hash or length).
	errChunkCorrupt = errors.New("chunk does not match the signed hash")
)

// chunkSource is where a download's chunks come from.
type chunkSource interface {
	// String names the source in logs and statuses.
	String() string
	// Fetch returns chunk i of payload p of app, verified with
	// protocol.VerifyChunk: never bytes that did not verify. Errors wrap
	// errChunkMissing or errChunkCorrupt when that is the reason. Safe for
	// concurrent use; the caller bounds the concurrency, and memory is one
	// chunk (plus one byte) per call in flight.
	Fetch(ctx context.Context, app string, p *protocol.Payload, i int) ([]byte, error)
}

// mqttChunks fetches one chunk at a time from the broker's retained chunk
// topics (SPEC.md §8.3) on its own subscription: a chunk that does not
// arrive within wait is missing (retained absence is silence).
type mqttChunks struct {
	client paho.Client
	wait   time.Duration
}

func (s *mqttChunks) String() string { return "the broker" }

func (s *mqttChunks) Fetch(ctx context.Context, app string, p *protocol.Payload, i int) ([]byte, error) {
	topic, err := protocol.ChunkTopic(app, p.SHA256, i)
	if err != nil {
		return nil, err
	}
	got := make(chan []byte, 1)
	tok := s.client.Subscribe(topic, 0, func(_ paho.Client, m paho.Message) {
		select {
		case got <- m.Payload():
		default:
		}
	})
	defer s.client.Unsubscribe(topic)
	if !tok.WaitTimeout(s.wait) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe %s: %v", topic, tok.Error())
	}
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("chunk %d: the broker sent nothing on %s within %s: %w", i, topic, s.wait, errChunkMissing)
	case b := <-got:
		if len(b) == 0 {
			return nil, fmt.Errorf("chunk %d: the broker holds an empty (cleared) %s: %w", i, topic, errChunkMissing)
		}
		if err := protocol.VerifyChunk(p, i, b); err != nil {
			return nil, fmt.Errorf("chunk %d from the broker: %v: %w", i, err, errChunkCorrupt)
		}
		return b, nil
	}
}
