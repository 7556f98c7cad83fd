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
	// payloads kept because another retained release still uses them.
	ChunksCleared  int
	SharedPayloads int
}

// Retire removes the retained envelopes of app at version on every channel,
// profile and device (an empty retained message clears a topic), and the
// chunks of their payloads that no remaining retained release references.
// Malformed retained envelopes are reported through logf and left alone.
func Retire(ctx context.Context, c paho.Client, app, version string, logf func(string, ...any)) (*RetireResult, error) {
	if !protocol.ValidApp(app) || !protocol.ValidVersion(version) {
		return nil, fmt.Errorf("retire: %q %q is not an app name and a semantic version", app, version)
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	snap, err := Snapshot(ctx, c, []string{protocol.AllReleasesFilter, protocol.AllDesiredFilter})
	if err != nil {
		return nil, err
	}
	res := &RetireResult{}
	retired := map[string]*protocol.Manifest{} // payload sha → manifest
	kept := map[string]bool{}
	topics := make([]string, 0, len(snap))
	for t := range snap {
		topics = append(topics, t)
	}
	sort.Strings(topics)
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
			kept[m.Payload.SHA256] = true
			continue
		}
		if err := wait(ctx, c.Publish(t, 1, true, []byte{}), time.Minute); err != nil {
			return res, fmt.Errorf("retire: clear %s: %w", t, err)
		}
		res.Cleared = append(res.Cleared, t)
		retired[m.Payload.SHA256] = m
	}
	for sha, m := range retired {
		if kept[sha] {
			res.SharedPayloads++
			continue
		}
		var last paho.Token
		for i := range m.Payload.Chunks {
			ct, err := protocol.ChunkTopic(m.App, sha, i)
			if err != nil {
				return res, err
			}
			last = c.Publish(ct, 1, true, []byte{})
			res.ChunksCleared++
		}
		if last != nil {
			if err := wait(ctx, last, time.Minute); err != nil {
				return res, fmt.Errorf("retire: clear chunks of %s: %w", sha, err)
			}
		}
	}
	return res, nil
}
