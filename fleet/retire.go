package fleet

import (
	"context"
	"fmt"
	"sort"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// RetireResult says what Retire removed.
type RetireResult struct {
	// Cleared are the release and desired topics whose envelope was removed.
	Cleared []string
	// ChunksCleared counts chunk topics removed; SharedPayloads counts
	// retired payloads of which at least one chunk topic was kept because a
	// remaining retained release of the same app still uses it.
	ChunksCleared  int
	SharedPayloads int
}

// Retire removes the retained envelopes of app at version on every channel,
// profile and device, and the deltas that lead to that version (an empty retained message clears a topic), and the
// chunk topics of their payloads that no remaining retained envelope
// references.
//
// A chunk topic (protocol.ChunkTopic) is named by app, payload sha256 and
// index, so references are counted per topic: another app with the same
// payload has its own chunk topics, and the same payload published with
// another chunk size shares only the indices both use. Malformed retained
// envelopes are reported through logf and left alone (they reference
// nothing a device could use).
func Retire(ctx context.Context, c paho.Client, app, version string, logf func(string, ...any)) (*RetireResult, error) {
	if !protocol.ValidApp(app) || !protocol.ValidVersion(version) {
		return nil, fmt.Errorf("retire: %q %q is not an app name and a semantic version", app, version)
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	// Deltas (SPEC.md §8.10) are retired with the release they lead to.
	snap, err := Snapshot(ctx, c, []string{protocol.AllReleasesFilter, protocol.AllDesiredFilter, protocol.AllDeltasFilter})
	if err != nil {
		return nil, err
	}
	res := &RetireResult{}
	var retired []*protocol.Manifest
	inUse := map[string]bool{} // chunk topics of the envelopes that stay
	topics := make([]string, 0, len(snap))
	for t := range snap {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	var clear []string
	for _, t := range topics {
		if len(snap[t]) == 0 {
			continue
		}
		env, err := protocol.ParseEnvelope(snap[t])
		if err != nil {
			logf("retire: skipping %s: %v", t, err)
			continue
		}
		m, err := protocol.ParseManifest(env.Manifest)
		if err != nil {
			logf("retire: skipping %s: %v", t, err)
			continue
		}
		if m.App != app || m.Version != version {
			for i := range m.Payload.Chunks {
				ct, err := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
				if err != nil {
					return nil, fmt.Errorf("retire: %s: %w", t, err)
				}
				inUse[ct] = true
			}
			continue
		}
		clear = append(clear, t)
		retired = append(retired, m)
	}
	for _, t := range clear {
		if err := wait(ctx, c.Publish(t, 1, true, []byte{}), time.Minute); err != nil {
			return res, fmt.Errorf("retire: clear %s: %w", t, err)
		}
		res.Cleared = append(res.Cleared, t)
	}
	// The retired envelopes (several channels, profiles, devices) may name
	// the same chunk topics; clear each once, and only when no envelope
	// that stays names it. Every clear is acknowledged, at most 16 at once.
	cleared := map[string]bool{}
	sharedSHA := map[string]bool{}
	type pending struct {
		topic string
		t     paho.Token
	}
	var queue []pending
	settle := func(p pending) error {
		if err := wait(ctx, p.t, time.Minute); err != nil {
			return fmt.Errorf("retire: clear %s: %w", p.topic, err)
		}
		res.ChunksCleared++
		return nil
	}
	for _, m := range retired {
		for i := range m.Payload.Chunks {
			ct, err := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
			if err != nil {
				return res, err
			}
			if inUse[ct] {
				if !sharedSHA[m.Payload.SHA256] {
					sharedSHA[m.Payload.SHA256] = true
					res.SharedPayloads++
				}
				continue
			}
			if cleared[ct] {
				continue
			}
			cleared[ct] = true
			if len(queue) == 16 {
				if err := settle(queue[0]); err != nil {
					return res, err
				}
				queue = queue[1:]
			}
			queue = append(queue, pending{ct, c.Publish(ct, 1, true, []byte{})})
		}
	}
	for _, p := range queue {
		if err := settle(p); err != nil {
			return res, err
		}
	}
	return res, nil
}
