package fleet

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// ErrSequenceConflict is wrapped by CheckSequence's refusals: the broker
// already holds the sequence for a different build of the app. A device
// that took one of the two builds never takes the other (it needs a higher
// sequence), so the fleet would split silently.
var ErrSequenceConflict = errors.New("sequence already used for a different build")

// CatalogFilters are the retained topics a Catalog reads.
var CatalogFilters = []string{protocol.AllReleasesFilter, protocol.AllDesiredFilter, protocol.AllRolloutsFilter}

// Held is one release envelope the broker holds: a channel release, a
// device assignment or a rollout candidate.
type Held struct {
	Topic string             `json:"topic"`
	Kind  protocol.TopicKind `json:"kind"` // release, desired or candidate
	// Channel is set for releases and candidates, Device for assignments.
	Channel string `json:"channel,omitempty"`
	Device  string `json:"device,omitempty"`
	App     string `json:"app"`
	// Manifest is the parsed manifest; nil when the envelope is malformed.
	Manifest *protocol.Manifest `json:"manifest,omitempty"`
	// Verified is true when a keyring was given and the signature verified
	// with it; Unverified says why it did not (the manifest is still
	// listed: devices may trust other keys).
	Verified   bool   `json:"verified"`
	Unverified string `json:"unverified,omitempty"`
	// Malformed says why the envelope could not be read (Manifest nil).
	Malformed string `json:"malformed,omitempty"`
	// pending marks a bundle of the batch being published, not yet on the
	// broker (Catalog.AddPending).
	pending string
}

// Where names the holding for an operator: "channel stable", "device
// pi-017", "rollout candidate on stable", or the file of a pending bundle.
func (h *Held) Where() string {
	switch {
	case h.pending != "":
		return h.pending
	case h.Kind == protocol.KindDesired:
		return "device " + h.Device + " (" + h.Topic + ")"
	case h.Kind == protocol.KindCandidate:
		return "rollout candidate on channel " + h.Channel + " (" + h.Topic + ")"
	}
	return "channel " + h.Channel + " (" + h.Topic + ")"
}

// HeldRollout is one rollout control message.
type HeldRollout struct {
	Topic     string            `json:"topic"`
	Rollout   *protocol.Rollout `json:"rollout,omitempty"`
	Malformed string            `json:"malformed,omitempty"`
}

// Catalog is a snapshot of what the broker holds: channel releases,
// device assignments, rollouts and their candidates. Every message is
// parsed strictly; one that does not parse, or whose content contradicts
// its topic, is listed with Malformed set and never stops the rest.
type Catalog struct {
	Releases    []*Held        `json:"releases"`
	Assignments []*Held        `json:"assignments"`
	Candidates  []*Held        `json:"candidates"`
	Rollouts    []*HeldRollout `json:"rollouts"`
	// Other lists retained topics under the filters that are none of the
	// above (a malformed topic name), with why.
	Other []string `json:"other,omitempty"`
	// pending are the bundles of a batch being published (AddPending).
	pending []*Held
}

// LoadCatalog reads the retained release, assignment and rollout topics
// (CatalogFilters) and builds a Catalog. kr, when not nil, verifies every
// envelope's signature.
func LoadCatalog(ctx context.Context, c paho.Client, kr *protocol.Keyring) (*Catalog, error) {
	snap, err := Snapshot(ctx, c, CatalogFilters)
	if err != nil {
		return nil, fmt.Errorf("read what the broker holds: %w", err)
	}
	return NewCatalog(snap, kr), nil
}

// NewCatalog builds a Catalog from retained messages by topic (empty
// messages, which clear a topic, are skipped). kr may be nil: then no
// signature is checked.
func NewCatalog(snap map[string][]byte, kr *protocol.Keyring) *Catalog {
	cat := &Catalog{Releases: []*Held{}, Assignments: []*Held{}, Candidates: []*Held{}, Rollouts: []*HeldRollout{}}
	topics := make([]string, 0, len(snap))
	for t := range snap {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	for _, topic := range topics {
		b := snap[topic]
		if len(b) == 0 {
			continue
		}
		t, err := protocol.ParseTopic(topic)
		if err != nil {
			cat.Other = append(cat.Other, fmt.Sprintf("%s: %v", protocol.CleanText(topic), err))
			continue
		}
		switch t.Kind {
		case protocol.KindRelease:
			cat.Releases = append(cat.Releases, parseHeld(topic, t, b, kr))
		case protocol.KindDesired:
			cat.Assignments = append(cat.Assignments, parseHeld(topic, t, b, kr))
		case protocol.KindCandidate:
			cat.Candidates = append(cat.Candidates, parseHeld(topic, t, b, kr))
		case protocol.KindRollout:
			hr := &HeldRollout{Topic: topic}
			r, err := protocol.ParseRollout(b)
			switch {
			case err != nil:
				hr.Malformed = err.Error()
			case r.Channel != t.Channel || r.App != t.App:
				hr.Malformed = fmt.Sprintf("the rollout says channel %s app %s, its topic %s %s", r.Channel, r.App, t.Channel, t.App)
			default:
				hr.Rollout = r
			}
			cat.Rollouts = append(cat.Rollouts, hr)
		default:
			cat.Other = append(cat.Other, fmt.Sprintf("%s: not a release, assignment or rollout topic", topic))
		}
	}
	return cat
}

// parseHeld parses one envelope and checks it against its topic.
func parseHeld(topic string, t protocol.Topic, b []byte, kr *protocol.Keyring) *Held {
	h := &Held{Topic: topic, Kind: t.Kind, Channel: t.Channel, Device: t.Device, App: t.App}
	env, err := protocol.ParseEnvelope(b)
	if err != nil {
		h.Malformed = err.Error()
		return h
	}
	m, err := protocol.ParseManifest(env.Manifest)
	if err != nil {
		h.Malformed = err.Error()
		return h
	}
	switch {
	case m.App != t.App:
		h.Malformed = fmt.Sprintf("the manifest is for app %s, the topic for %s", m.App, t.App)
		return h
	case t.Profile != "" && m.Profile != t.Profile:
		h.Malformed = fmt.Sprintf("the manifest is for profile %s, the topic for %s", m.Profile, t.Profile)
		return h
	}
	h.Manifest = m
	if kr != nil {
		if _, err := kr.Verify(env.Manifest, []byte(env.Signature)); err != nil {
			h.Unverified = err.Error()
		} else {
			h.Verified = true
		}
	}
	return h
}

// All returns every holding with a readable manifest: releases,
// assignments, candidates and pending bundles.
func (c *Catalog) All() []*Held {
	var out []*Held
	for _, list := range [][]*Held{c.Releases, c.Assignments, c.Candidates, c.pending} {
		for _, h := range list {
			if h.Manifest != nil {
				out = append(out, h)
			}
		}
	}
	return out
}

// Malformed counts the messages that could not be read.
func (c *Catalog) Malformed() int {
	n := len(c.Other)
	for _, list := range [][]*Held{c.Releases, c.Assignments, c.Candidates} {
		for _, h := range list {
			if h.Manifest == nil {
				n++
			}
		}
	}
	for _, r := range c.Rollouts {
		if r.Rollout == nil {
			n++
		}
	}
	return n
}

// NextSequence is the lowest sequence above every one held for app
// (releases, assignments, candidates, rollouts): the one to use for a new
// build.
func (c *Catalog) NextSequence(app string) uint64 {
	var high uint64
	for _, h := range c.All() {
		if h.Manifest.App == app {
			high = max(high, h.Manifest.Sequence)
		}
	}
	for _, r := range c.Rollouts {
		if r.Rollout != nil && r.Rollout.App == app {
			high = max(high, r.Rollout.Sequence)
		}
	}
	return high + 1
}

// AddPending records a build that is not on the broker, such as a bundle
// about to be published, so that the next CheckSequence sees it; where
// names it in messages ("dist/x.efb (in this batch)").
func (c *Catalog) AddPending(m *protocol.Manifest, where string) {
	c.pending = append(c.pending, &Held{App: m.App, Manifest: m, pending: where})
}

// CheckSequence refuses a build whose sequence the broker already holds
// for a different build of the same app: the same sequence with a
// different version (whatever the profile), or with the same profile and
// a different payload (payloadSHA; empty means m.Payload.SHA256), or a
// rollout (running or over) of the same sequence with another version.
// Different profiles of one build have different payloads and pass, and
// so does the same build again (a re-publish). The error wraps
// ErrSequenceConflict and says where the other build is and which
// sequence to use.
func (c *Catalog) CheckSequence(m *protocol.Manifest, payloadSHA string) error {
	if payloadSHA == "" {
		payloadSHA = m.Payload.SHA256
	}
	var clash []string
	onBroker := false
	for _, h := range c.All() {
		o := h.Manifest
		if o.App != m.App || o.Sequence != m.Sequence {
			continue
		}
		if (o.Version != m.Version || o.Profile == m.Profile && o.Payload.SHA256 != payloadSHA) && h.pending == "" {
			onBroker = true
		}
		switch {
		case o.Version != m.Version:
			clash = append(clash, fmt.Sprintf("%s holds %s %s (%s) with sequence %d", h.Where(), o.App, o.Version, o.Profile, o.Sequence))
		case o.Profile == m.Profile && o.Payload.SHA256 != payloadSHA:
			clash = append(clash, fmt.Sprintf("%s holds a different %s %s build for %s with sequence %d (payload %.12s…, this one %.12s…)",
				h.Where(), o.App, o.Version, o.Profile, o.Sequence, o.Payload.SHA256, payloadSHA))
		}
	}
	// A rollout's record outlives its candidates (a label-selected
	// rollout is never promoted): the devices it reached run its version.
	for _, hr := range c.Rollouts {
		if r := hr.Rollout; r != nil && r.App == m.App && r.Sequence == m.Sequence && r.Version != m.Version {
			onBroker = true
			clash = append(clash, fmt.Sprintf("rollout %s (%s, %s) gave %s %s sequence %d", r.ID, hr.Topic, r.State, r.App, r.Version, r.Sequence))
		}
	}
	if len(clash) == 0 {
		return nil
	}
	more := ""
	if len(clash) > 3 {
		more = fmt.Sprintf("; and %d more", len(clash)-3)
		clash = clash[:3]
	}
	retire := ""
	if onBroker {
		retire = ", or retire the other release first"
	}
	return fmt.Errorf("%s %s (%s) has sequence %d, which is already used for a different build: %s%s. "+
		"A device that takes one of the two never takes the other, so the fleet would split; "+
		"re-pack with --sequence %d (the next free sequence of %s)%s: %w",
		m.App, m.Version, m.Profile, m.Sequence, strings.Join(clash, "; "), more, c.NextSequence(m.App), m.App, retire, ErrSequenceConflict)
}
