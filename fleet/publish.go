package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// PublishOptions configures PublishBundle.
type PublishOptions struct {
	// Keyring verifies every bundle before a byte is published. Required.
	Keyring *protocol.Keyring
	// Channel publishes to the channel's release topic; Device publishes to
	// that device's desired topic instead (edgefleet assign). Exactly one.
	Channel string
	Device  string
	// Candidate, with Channel, publishes the envelope to the channel's
	// rollout candidate topic instead of its release topic (rollout
	// start): only the rollout's members take it.
	Candidate bool
	// InFlight bounds unacknowledged QoS 1 chunk publishes. Default 16.
	InFlight int
	// Progress, when set, is called after each chunk is acknowledged with
	// payload bytes done and total.
	Progress func(done, total int64)
	// Now is the clock for the expiry check. Default time.Now.
	Now func() time.Time
	// EnvelopeOnly publishes the release envelope but not the chunks:
	// an earlier PublishBundle of the same bundle in this run published
	// them (assign to several devices). The bundle is verified all the
	// same. Default false.
	EnvelopeOnly bool
	// SkipReadBack skips reading the chunks back from the broker before
	// the envelope goes out. Default false: every chunk is read back and
	// one the broker acknowledged but does not hold is published again
	// (a broker can lose an acknowledged retained message), at the cost
	// of receiving the payload once.
	SkipReadBack bool
	// MirrorDir, when set, also writes every chunk as a content-addressed
	// object under this directory (SPEC.md §8.9), before the envelope is
	// published, for any static web server, CDN or S3 website to serve.
	// Default "" (no export).
	MirrorDir string
	// Mirrors are the mirror base URLs listed in the envelope (SPEC.md
	// §8.2, §8.9); devices fetch chunks there first and fall back to the
	// broker's chunks. At most protocol.MaxMirrors. Default none.
	Mirrors []string
	// Targeting, when set, signs a targeting of the release for Channel
	// or Device into the envelope (SPEC.md §8.13, targeting.go). Default
	// none: devices whose key set names targeting keys then refuse it.
	Targeting *TargetingOptions
}

// Validate checks the options and fills defaults.
func (o *PublishOptions) Validate() error {
	if o.Keyring == nil {
		return errors.New("publish: a trusted public key is required (--pub) so that bundles are verified before they are published")
	}
	if (o.Channel == "") == (o.Device == "") {
		return errors.New("publish: give a channel or a device, not both")
	}
	if o.Candidate && o.Channel == "" {
		return errors.New("publish: a rollout candidate needs a channel")
	}
	if o.Channel != "" && !protocol.ValidChannel(o.Channel) {
		return fmt.Errorf("publish: channel %q: use lower-case letters, digits, . _ -", o.Channel)
	}
	if o.Device != "" && !protocol.ValidDeviceID(o.Device) {
		return fmt.Errorf("publish: %v", protocol.CheckDeviceID(o.Device))
	}
	if err := protocol.CheckMirrors(o.Mirrors); err != nil {
		return fmt.Errorf("publish: --mirror-url: %w", err)
	}
	if o.InFlight <= 0 {
		o.InFlight = 16
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// PublishResult says what was published.
type PublishResult struct {
	Manifest *protocol.Manifest
	Topic    string // release or desired topic of the envelope
	Chunks   int
	Bytes    int64 // payload bytes published as chunks
	// Republished counts chunks the broker acknowledged but did not hold
	// when they were read back, and that were published again.
	Republished int
	// MirrorWritten counts the chunk objects written to MirrorDir (those
	// already there unchanged are not counted).
	MirrorWritten int
}

// VerifyBundleFile opens the bundle at path, verifies the manifest
// signature, the expiry, every chunk, the payload hash and the decoded
// executable's size and hash.
func VerifyBundleFile(path string, kr *protocol.Keyring, now time.Time) (*protocol.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := protocol.OpenBundle(f, kr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := b.Manifest.CheckExpiry(now); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var exe io.Reader
	if b.Manifest.IsDelta() {
		// A delta's payload is a patch: every chunk and its hash are
		// checked; the result is checked where it is applied.
		exe, err = b.Payload()
	} else {
		exe, err = b.Executable()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := io.Copy(io.Discard, exe); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b.Manifest, nil
}

// PublishBundle verifies the bundle at path in full, publishes its chunks
// (retained, QoS 1, at most InFlight unacknowledged) and then, only when
// every chunk is acknowledged, its release envelope: a device never sees a
// manifest whose chunks are missing.
func PublishBundle(ctx context.Context, c paho.Client, path string, o PublishOptions) (*PublishResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if _, err := VerifyBundleFile(path, o.Keyring, o.Now()); err != nil {
		return nil, fmt.Errorf("not publishing: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Second pass: the chunk verifier checks every chunk again, so a file
	// changed between the passes cannot slip through.
	b, err := protocol.OpenBundle(f, o.Keyring)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m := b.Manifest
	var topic string
	switch {
	case m.IsDelta():
		// Deltas are addressed by result and base (SPEC.md §8.10),
		// whatever the channel or device: they serve every channel that
		// publishes the release.
		topic, err = protocol.DeltaTopic(m.App, m.Executable.SHA256, m.Delta.BaseSHA256)
	case o.Candidate:
		topic, err = protocol.CandidateTopic(o.Channel, m.App, m.Profile)
	case o.Channel != "":
		topic, err = protocol.ReleaseTopic(o.Channel, m.App, m.Profile)
	default:
		topic, err = protocol.DesiredTopic(o.Device, m.App)
	}
	if err != nil {
		return nil, err
	}
	env, err := protocol.MarshalEnvelopeMirrors(b.RawManifest, b.RawSignature, o.Mirrors)
	if err == nil {
		env, err = o.target(env, b.RawManifest) // targeting.go
	}
	if err != nil {
		return nil, err
	}
	payload, err := b.Payload()
	if err != nil {
		return nil, err
	}
	res := &PublishResult{Manifest: m, Topic: topic}
	type pending struct {
		t paho.Token
		n int64
	}
	var queue []pending
	var done int64
	settle := func(p pending) error {
		if err := wait(ctx, p.t, 2*time.Minute); err != nil {
			return fmt.Errorf("publish chunk: %w", err)
		}
		done += p.n
		if o.Progress != nil {
			o.Progress(done, m.Payload.Size)
		}
		return nil
	}
	for i := range m.Payload.Chunks {
		buf := make([]byte, m.Payload.ChunkLen(i)) // paho keeps it until acknowledged
		if _, err := io.ReadFull(payload, buf); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ct, err := protocol.ChunkTopic(m.App, m.Payload.SHA256, i)
		if err != nil {
			return nil, err
		}
		if o.MirrorDir != "" {
			// The payload reader verified this chunk against the signed hash.
			w, err := writeMirrorChunk(o.MirrorDir, m.App, &m.Payload, i, buf)
			if err != nil {
				return nil, err
			}
			if w {
				res.MirrorWritten++
			}
		}
		if o.EnvelopeOnly {
			continue
		}
		if len(queue) == o.InFlight {
			if err := settle(queue[0]); err != nil {
				return nil, err
			}
			queue = queue[1:]
		}
		queue = append(queue, pending{c.Publish(ct, 1, true, buf), int64(len(buf))})
		res.Chunks++
		res.Bytes += int64(len(buf))
	}
	// The end of the payload stream checks the whole-payload hash.
	if _, err := io.Copy(io.Discard, payload); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range queue {
		if err := settle(p); err != nil {
			return nil, err
		}
	}
	if !o.EnvelopeOnly && !o.SkipReadBack {
		if err := confirmChunks(ctx, c, path, m, o.Keyring, res); err != nil {
			return nil, err
		}
	}
	if err := wait(ctx, c.Publish(topic, 1, true, env), 2*time.Minute); err != nil {
		return nil, fmt.Errorf("publish release envelope: %w", err)
	}
	return res, nil
}

// Unassign clears a device's desired release for app, so the device
// follows its channel again.
func Unassign(ctx context.Context, c paho.Client, device, app string) error {
	t, err := protocol.DesiredTopic(device, app)
	if err != nil {
		return err
	}
	return wait(ctx, c.Publish(t, 1, true, []byte{}), time.Minute)
}
