package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// Liveness is kept apart from state (SPEC.md §8.4a), as Sparkplug's birth
// and death certificates are: a device's retained status says what it
// runs and is only ever written by the device itself, while its retained
// presence message says whether it is connected and is also its last
// will. A device that loses power keeps its last reported versions on the
// broker; only its presence turns to offline.

// Topic kinds for liveness and the device's own view markers.
const (
	KindPresence TopicKind = "online" // edgefleet/v1/device/<id>/online
	KindSync     TopicKind = "sync"   // edgefleet/v1/device/<id>/sync
)

// PresenceFilter matches every device's presence message.
const PresenceFilter = TopicPrefix + "device/+/online"

// DeviceFilters are what a fleet view subscribes to: every device's status
// and presence.
var DeviceFilters = []string{StatusFilter, PresenceFilter}

// PresenceTopic is where a device says it is online (retained, on every
// connect) and where its last will says it is offline.
func PresenceTopic(device string) (string, error) {
	if !ValidDeviceID(device) {
		return "", topicErr("device id", device)
	}
	return Topic{Kind: KindPresence, Device: device}.String(), nil
}

// SyncTopic is where a device sends itself a non-retained marker after it
// subscribes to its release topics: the marker's arrival means every
// retained release has been delivered (§8.1), so the device decides on a
// complete view, never on the first of several profiles to arrive.
func SyncTopic(device string) (string, error) {
	if !ValidDeviceID(device) {
		return "", topicErr("device id", device)
	}
	return Topic{Kind: KindSync, Device: device}.String(), nil
}

// MaxPresenceSize bounds a presence message.
const MaxPresenceSize = 1024

// Presence is the retained liveness message of a device. Time is when the
// device wrote it: for online, the connection's start; for a last will,
// also the connection's start (the broker publishes it later, unchanged);
// for a clean shutdown, the moment of the shutdown. Readers take a
// device's last contact as the later of Presence.Time and its status's
// Time (the status is refreshed while the device is connected).
type Presence struct {
	Schema int       `json:"schema"`
	Device string    `json:"device"`
	Online bool      `json:"online"`
	Time   time.Time `json:"time"`
}

// Marshal validates and encodes the presence message.
func (p *Presence) Marshal() ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(p)
}

func (p *Presence) validate() error {
	if p.Schema != MQTTSchemaVersion {
		return fmt.Errorf("presence schema %d, this build understands %d: %w", p.Schema, MQTTSchemaVersion, ErrSchema)
	}
	if !ValidDeviceID(p.Device) {
		return fmt.Errorf("presence: device id %q is not valid: %w", clip(p.Device), ErrMalformed)
	}
	return nil
}

// ParsePresence decodes a presence message strictly.
func ParsePresence(b []byte) (*Presence, error) {
	if len(b) > MaxPresenceSize {
		return nil, fmt.Errorf("presence message is %d bytes, more than the %d allowed: %w", len(b), MaxPresenceSize, ErrTooLarge)
	}
	if err := checkSchema(b, "presence message"); err != nil {
		return nil, err
	}
	var p Presence
	if err := strictJSON(b, &p); err != nil {
		return nil, fmt.Errorf("presence message: %v: %w", err, ErrMalformed)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &p, nil
}
