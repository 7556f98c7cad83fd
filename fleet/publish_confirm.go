package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// confirmRounds bounds how often PublishBundle re-sends chunks that a
// broker acknowledged but does not hold.
const confirmRounds = 5

// ErrChunksLost is returned (wrapped) by PublishBundle when the broker
// acknowledged chunks it then did not hold after confirmRounds tries.
var ErrChunksLost = errors.New("the broker does not keep the published chunks")

// confirmChunks reads the release's chunks back from the broker (hashing
// each as it arrives: memory stays one chunk) and publishes again those
// it does not hold, or holds with other bytes, before the envelope goes
// out. A broker can acknowledge a retained publish and lose it: NATS's
// MQTT layer does ("unable to store retained message") while its
// JetStream elects a new leader after a node died.
func confirmChunks(ctx context.Context, c paho.Client, path string, m *protocol.Manifest, kr *protocol.Keyring, res *PublishResult) error {
	filter, err := protocol.ChunksFilter(m.App, m.Payload.SHA256)
	if err != nil {
		return err
	}
	for round := 1; ; round++ {
		var mu sync.Mutex
		got := map[string]string{} // topic → sha256 of the held bytes
		err := Subscribe(ctx, c, []string{filter}, func(topic string, payload []byte) {
			sum := sha256.Sum256(payload)
			mu.Lock()
			got[topic] = hex.EncodeToString(sum[:])
			mu.Unlock()
		})
		wait(ctx, c.Unsubscribe(filter), 10*time.Second)
		if err != nil {
			return fmt.Errorf("read the published chunks back: %w", err)
		}
		mu.Lock()
		var bad []int
		for i, want := range m.Payload.Chunks {
			t, _ := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
			if got[t] != want {
				bad = append(bad, i)
			}
		}
		mu.Unlock()
		if len(bad) == 0 {
			return nil
		}
		if round == confirmRounds {
			return fmt.Errorf("%w: it acknowledged chunks %s of %s %s but does not hold them after %d tries; the release envelope was not published (check the broker's retained-message storage, e.g. a cluster that lost a node; then publish again)",
				ErrChunksLost, list(bad), m.App, m.Version, confirmRounds)
		}
		if err := republish(ctx, c, path, m, kr, bad, res); err != nil {
			return err
		}
		res.Republished += len(bad)
		// A clustered broker stores a retained message after it
		// acknowledges it (NATS: in JetStream): give it time before the
		// next read-back, longer each round.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(round) * 500 * time.Millisecond):
		}
	}
}

// republish publishes chunks idx of the bundle at path again (verified
// against the signed hashes on the way, as the first pass was).
func republish(ctx context.Context, c paho.Client, path string, m *protocol.Manifest, kr *protocol.Keyring, idx []int, res *PublishResult) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, kr)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	payload, err := b.Payload()
	if err != nil {
		return err
	}
	want := map[int]bool{}
	for _, i := range idx {
		want[i] = true
	}
	var toks []paho.Token
	for i := range m.Payload.Chunks {
		buf := make([]byte, m.Payload.ChunkLen(i))
		if _, err := io.ReadFull(payload, buf); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if !want[i] {
			continue
		}
		t, _ := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
		toks = append(toks, c.Publish(t, 1, true, buf))
		res.Bytes += int64(len(buf))
	}
	for _, tok := range toks {
		if err := wait(ctx, tok, 2*time.Minute); err != nil {
			return fmt.Errorf("publish chunk again: %w", err)
		}
	}
	return nil
}

func list(idx []int) string {
	sort.Ints(idx)
	s := make([]string, len(idx))
	for i, n := range idx {
		s[i] = fmt.Sprint(n)
	}
	if len(s) > 20 {
		s = append(s[:20], fmt.Sprintf("… (%d in all)", len(idx)))
	}
	return strings.Join(s, ", ")
}
