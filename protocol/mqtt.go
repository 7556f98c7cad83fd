package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MQTT topics and messages (SPEC.md §8). Every topic starts with
// TopicPrefix, which carries the protocol version: a future incompatible
// change moves to edgefleet/v2/ and both can live on one broker.
const (
	TopicPrefix = "edgefleet/v1/"

	// MQTTSchemaVersion is the schema of the JSON messages below (release
	// envelope and device status).
	MQTTSchemaVersion = 1

	// MaxEnvelopeSize bounds a release envelope: a base64 manifest of at
	// most MaxManifestSize bytes plus a signature.
	MaxEnvelopeSize = (MaxManifestSize+2)/3*4 + 2*MaxSignatureSize + 1024 + (MaxTargetingSize+2)/3*4 + MaxSignatureSize

	// MaxStatusSize bounds a device status message.
	MaxStatusSize = 64 << 10

	// MaxStatusApps bounds the number of apps in one status message.
	MaxStatusApps = 64

	// MaxLastError bounds a status's last_error string (bytes).
	MaxLastError = 1024

	maxSegment = 128
)

var (
	// No '.': NATS refuses it in MQTT client ids (SPEC.md §8.1).
	deviceRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	channelRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
)

// ValidDeviceID reports whether s is an acceptable device id: ASCII
// letters, digits, '_' and '-', at most 64, starting with a letter or
// digit. Device ids are MQTT client ids, user names, certificate CNs and
// topic segments, so the syntax is one every supported broker accepts as
// a client id (NATS refuses '.'; SPEC.md §8.1).
func ValidDeviceID(s string) bool { return deviceRe.MatchString(s) }

// DeviceIDSyntax describes a valid device id for messages.
const DeviceIDSyntax = "ASCII letters, digits, '_' and '-' only, at most 64, starting with a letter or digit"

// CheckDeviceID says in a full sentence what is wrong with device id s
// and what to use instead, or returns nil. The error does not wrap a
// sentinel.
func CheckDeviceID(s string) error {
	if ValidDeviceID(s) {
		return nil
	}
	msg := fmt.Sprintf("device id %q cannot be used: it is the device's MQTT client id, user name and topic segment, so it must be %s", clip(s), DeviceIDSyntax)
	if strings.Contains(s, ".") {
		msg += " ('.' is refused because NATS does not accept it in a client id)"
		if alt := strings.ReplaceAll(s, ".", "-"); ValidDeviceID(alt) {
			msg += fmt.Sprintf("; use %q instead", alt)
		}
	}
	return errors.New(msg)
}

// ValidChannel reports whether s is an acceptable release channel name.
func ValidChannel(s string) bool { return channelRe.MatchString(s) }

// TopicKind names what a topic carries.
type TopicKind string

// Topic kinds.
const (
	KindRelease TopicKind = "release" // edgefleet/v1/release/<channel>/<app>/<profile>/manifest
	KindChunk   TopicKind = "chunk"   // edgefleet/v1/chunks/<app>/<payload sha256>/<index>
	KindDesired TopicKind = "desired" // edgefleet/v1/device/<id>/desired/<app>
	KindStatus  TopicKind = "status"  // edgefleet/v1/device/<id>/status
	KindDelta   TopicKind = "delta"   // edgefleet/v1/delta/<app>/<result sha256>/<base sha256>
)

// Topic is a parsed edgefleet topic. Only the fields of its Kind are set.
type Topic struct {
	Kind    TopicKind
	Channel string
	App     string
	Profile string
	Device  string
	SHA256  string // payload sha256 (chunks); result executable sha256 (deltas)
	Base    string // base executable sha256 (deltas)
	Index   int    // chunk index
}

// String builds the topic name. It panics on nothing; invalid fields give an
// error from the builder functions instead, so prefer those.
func (t Topic) String() string {
	switch t.Kind {
	case KindRelease:
		return TopicPrefix + "release/" + t.Channel + "/" + t.App + "/" + t.Profile + "/manifest"
	case KindChunk:
		return TopicPrefix + "chunks/" + t.App + "/" + t.SHA256 + "/" + strconv.Itoa(t.Index)
	case KindDesired:
		return TopicPrefix + "device/" + t.Device + "/desired/" + t.App
	case KindStatus:
		return TopicPrefix + "device/" + t.Device + "/status"
	case KindPresence:
		return TopicPrefix + "device/" + t.Device + "/online"
	case KindSync:
		return TopicPrefix + "device/" + t.Device + "/sync"
	case KindLogs:
		return TopicPrefix + "device/" + t.Device + "/logs"
	case KindLogsRequest:
		return TopicPrefix + "device/" + t.Device + "/logs/request"
	case KindRollout:
		return TopicPrefix + "rollout/" + t.Channel + "/" + t.App
	case KindCandidate:
		return TopicPrefix + "rollout/" + t.Channel + "/" + t.App + "/" + t.Profile + "/manifest"
	case KindDriver:
		return DriverTopic
	case KindDelta:
		return TopicPrefix + "delta/" + t.App + "/" + t.SHA256 + "/" + t.Base
	}
	return ""
}

func topicErr(what, v string) error {
	return fmt.Errorf("%s %q cannot be used in an MQTT topic (letters, digits, . _ - only; no '/', '+', '#'): %w", what, clip(v), ErrMalformed)
}

// ReleaseTopic is where the retained release envelope of app for profile on
// channel lives.
func ReleaseTopic(channel, app, profile string) (string, error) {
	switch {
	case !ValidChannel(channel):
		return "", topicErr("channel", channel)
	case !ValidApp(app):
		return "", topicErr("app", app)
	case !ValidProfileName(profile):
		return "", topicErr("profile", profile)
	}
	return Topic{Kind: KindRelease, Channel: channel, App: app, Profile: profile}.String(), nil
}

// ReleaseFilter subscribes to every profile's release of app on channel.
func ReleaseFilter(channel, app string) (string, error) {
	if !ValidChannel(channel) {
		return "", topicErr("channel", channel)
	}
	if !ValidApp(app) {
		return "", topicErr("app", app)
	}
	return TopicPrefix + "release/" + channel + "/" + app + "/+/manifest", nil
}

// AllReleasesFilter matches every retained release envelope.
const AllReleasesFilter = TopicPrefix + "release/+/+/+/manifest"

// AllDesiredFilter matches every device's desired releases.
const AllDesiredFilter = TopicPrefix + "device/+/desired/+"

// StatusFilter matches every device's status.
const StatusFilter = TopicPrefix + "device/+/status"

// ChunkTopic is where chunk index of the payload with sha256 payloadSHA lives.
// Chunks are content-addressed, so channels and devices share them.
func ChunkTopic(app, payloadSHA string, index int) (string, error) {
	if !ValidApp(app) {
		return "", topicErr("app", app)
	}
	if !hexRe.MatchString(payloadSHA) {
		return "", fmt.Errorf("payload sha256 %q is not 64 lower-case hex digits: %w", clip(payloadSHA), ErrMalformed)
	}
	if index < 0 || int64(index) >= ChunkCount(MaxPayloadSize, MinChunkSize) {
		return "", fmt.Errorf("chunk index %d out of range: %w", index, ErrMalformed)
	}
	return Topic{Kind: KindChunk, App: app, SHA256: payloadSHA, Index: index}.String(), nil
}

// ChunksFilter matches every chunk of one payload.
func ChunksFilter(app, payloadSHA string) (string, error) {
	t, err := ChunkTopic(app, payloadSHA, 0)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(t, "0") + "+", nil
}

// DesiredTopic is where a release aimed at one device lives; it wins over
// the device's channel.
func DesiredTopic(device, app string) (string, error) {
	if err := CheckDeviceID(device); err != nil {
		return "", fmt.Errorf("%v: %w", err, ErrMalformed)
	}
	if !ValidApp(app) {
		return "", topicErr("app", app)
	}
	return Topic{Kind: KindDesired, Device: device, App: app}.String(), nil
}

// StatusTopic is where a device publishes its retained status.
func StatusTopic(device string) (string, error) {
	if err := CheckDeviceID(device); err != nil {
		return "", fmt.Errorf("%v: %w", err, ErrMalformed)
	}
	return Topic{Kind: KindStatus, Device: device}.String(), nil
}

// ParseTopic parses an edgefleet topic name (not a filter). Every segment is
// validated, so the result can be trusted to rebuild the same topic.
func ParseTopic(s string) (Topic, error) {
	bad := func() (Topic, error) {
		return Topic{}, fmt.Errorf("topic %q is not an edgefleet/v1 topic: %w", clip(s), ErrMalformed)
	}
	if len(s) > 512 || !strings.HasPrefix(s, TopicPrefix) {
		return bad()
	}
	p := strings.Split(s[len(TopicPrefix):], "/")
	var t Topic
	switch {
	case len(p) == 5 && p[0] == "release" && p[4] == "manifest":
		t = Topic{Kind: KindRelease, Channel: p[1], App: p[2], Profile: p[3]}
		if !ValidChannel(t.Channel) || !ValidApp(t.App) || !ValidProfileName(t.Profile) {
			return bad()
		}
	case len(p) == 4 && p[0] == "chunks":
		i, err := strconv.Atoi(p[3])
		if err != nil || strconv.Itoa(i) != p[3] {
			return bad()
		}
		t = Topic{Kind: KindChunk, App: p[1], SHA256: p[2], Index: i}
		if _, err := ChunkTopic(t.App, t.SHA256, i); err != nil {
			return bad()
		}
	case len(p) == 4 && p[0] == "device" && p[2] == "desired":
		t = Topic{Kind: KindDesired, Device: p[1], App: p[3]}
		if !ValidDeviceID(t.Device) || !ValidApp(t.App) {
			return bad()
		}
	case len(p) == 3 && p[0] == "device" && (p[2] == "status" || p[2] == "online" || p[2] == "sync"):
		t = Topic{Kind: map[string]TopicKind{"status": KindStatus, "online": KindPresence, "sync": KindSync}[p[2]], Device: p[1]}
		if !ValidDeviceID(t.Device) {
			return bad()
		}
	case len(p) == 3 && p[0] == "device" && p[2] == "logs", len(p) == 4 && p[0] == "device" && p[2] == "logs" && p[3] == "request":
		t = Topic{Kind: KindLogs, Device: p[1]}
		if len(p) == 4 {
			t.Kind = KindLogsRequest
		}
		if !ValidDeviceID(t.Device) {
			return bad()
		}
	case len(p) == 3 && p[0] == "rollout":
		t = Topic{Kind: KindRollout, Channel: p[1], App: p[2]}
		if !ValidChannel(t.Channel) || !ValidApp(t.App) {
			return bad()
		}
	case len(p) == 5 && p[0] == "rollout" && p[4] == "manifest":
		t = Topic{Kind: KindCandidate, Channel: p[1], App: p[2], Profile: p[3]}
		if !ValidChannel(t.Channel) || !ValidApp(t.App) || !ValidProfileName(t.Profile) {
			return bad()
		}
	case len(p) == 4 && p[0] == "delta":
		t = Topic{Kind: KindDelta, App: p[1], SHA256: p[2], Base: p[3]}
		if _, err := DeltaTopic(t.App, t.SHA256, t.Base); err != nil {
			return bad()
		}
	case len(p) == 1 && p[0] == "driver":
		t = Topic{Kind: KindDriver}
	default:
		return bad()
	}
	return t, nil
}

// Envelope is the retained message of a release (channel or desired
// topic): the manifest bytes exactly as signed, and the minisign signature.
// A device verifies Manifest as it is, never a re-serialisation.
type Envelope struct {
	Schema    int    `json:"schema"`
	Manifest  []byte `json:"manifest"`  // base64 in JSON
	Signature string `json:"signature"` // minisign signature text
	// Mirrors are base URLs of HTTP(S) mirrors that serve the release's
	// chunks (SPEC.md §8.9), published by the operator (not signed: a
	// device verifies every chunk against the signed manifest, so a mirror
	// is untrusted). Optional; at most MaxMirrors, checked by CheckMirrors.
	Mirrors []string `json:"mirrors,omitempty"`
	// Targeting, optional, is the signed "this release goes to this
	// channel or device until T" (SPEC.md §8.13, targeting.go).
	Targeting *SignedTargeting `json:"targeting,omitempty"`
}

const (
	// MaxMirrors bounds the mirror URLs of an envelope (or an agent
	// config).
	MaxMirrors = 8
	// MaxMirrorURL bounds the length of one mirror base URL.
	MaxMirrorURL = 512
)

// CheckMirrors checks mirror base URLs (SPEC.md §8.9): at most MaxMirrors,
// each at most MaxMirrorURL bytes, an absolute http:// or https:// URL with
// a host, no user information, query or fragment, no control characters,
// and no duplicates.
func CheckMirrors(urls []string) error {
	if len(urls) > MaxMirrors {
		return fmt.Errorf("%d mirror URLs, at most %d allowed: %w", len(urls), MaxMirrors, ErrMalformed)
	}
	seen := map[string]bool{}
	for _, s := range urls {
		if err := CheckMirrorURL(s); err != nil {
			return err
		}
		if seen[s] {
			return fmt.Errorf("mirror URL %q is listed twice: %w", s, ErrMalformed)
		}
		seen[s] = true
	}
	return nil
}

// CheckMirrorURL checks one mirror base URL (see CheckMirrors).
func CheckMirrorURL(s string) error {
	bad := func(why string) error {
		return fmt.Errorf("mirror URL %.80q %s; give a base URL such as https://cdn.example.com/edgefleet: %w", s, why, ErrMalformed)
	}
	if s == "" || len(s) > MaxMirrorURL {
		return bad(fmt.Sprintf("is %d bytes, want 1..%d", len(s), MaxMirrorURL))
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r > 0x7e {
			return bad("has a space, a control or a non-ASCII character")
		}
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("does not parse")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("is not http:// or https://")
	case u.Host == "" || u.Hostname() == "":
		return bad("has no host")
	case u.User != nil:
		return bad("has user information (mirrors are public and untrusted)")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return bad("has a query or a fragment")
	case u.Opaque != "":
		return bad("is not hierarchical")
	}
	return nil
}

// MirrorChunkPath is the path of chunk i of a payload below a mirror's
// base (SPEC.md §8.9): chunks/<app>/<payload sha256>/<i>.
func MirrorChunkPath(app, payloadSHA string, i int) string {
	return "chunks/" + app + "/" + payloadSHA + "/" + strconv.Itoa(i)
}

// MirrorChunkURL is the URL of chunk i of a payload on the mirror at base.
func MirrorChunkURL(base, app, payloadSHA string, i int) string {
	return strings.TrimRight(base, "/") + "/" + MirrorChunkPath(app, payloadSHA, i)
}

// MarshalEnvelope builds a release envelope. It checks sizes and that the
// manifest parses, but not the signature (the publisher verified it).
func MarshalEnvelope(rawManifest, sig []byte) ([]byte, error) {
	return MarshalEnvelopeMirrors(rawManifest, sig, nil)
}

// MarshalEnvelopeMirrors is MarshalEnvelope with mirror base URLs
// (SPEC.md §8.9), checked by CheckMirrors.
func MarshalEnvelopeMirrors(rawManifest, sig []byte, mirrors []string) ([]byte, error) {
	if err := CheckMirrors(mirrors); err != nil {
		return nil, err
	}
	if len(rawManifest) > MaxManifestSize || len(sig) > MaxSignatureSize {
		return nil, fmt.Errorf("manifest or signature too large for an envelope: %w", ErrTooLarge)
	}
	if _, err := ParseManifest(rawManifest); err != nil {
		return nil, err
	}
	return json.Marshal(Envelope{Schema: MQTTSchemaVersion, Manifest: rawManifest, Signature: string(sig), Mirrors: mirrors})
}

// ParseEnvelope decodes a release envelope strictly. An empty message means
// the retained release was cleared: callers check len(b) == 0 first. The
// signature is not checked here: use Open.
func ParseEnvelope(b []byte) (*Envelope, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("release envelope is empty (the release was retired): %w", ErrMalformed)
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("release envelope is %d bytes, more than the %d allowed: %w", len(b), MaxEnvelopeSize, ErrTooLarge)
	}
	if err := checkSchema(b, "release envelope"); err != nil {
		return nil, err
	}
	var e Envelope
	if err := strictJSON(b, &e); err != nil {
		return nil, fmt.Errorf("release envelope: %v: %w", err, ErrMalformed)
	}
	if len(e.Manifest) == 0 || len(e.Manifest) > MaxManifestSize {
		return nil, fmt.Errorf("release envelope manifest is %d bytes, want 1..%d: %w", len(e.Manifest), MaxManifestSize, ErrMalformed)
	}
	if len(e.Signature) == 0 || len(e.Signature) > MaxSignatureSize {
		return nil, fmt.Errorf("release envelope signature is %d bytes, want 1..%d: %w", len(e.Signature), MaxSignatureSize, ErrMalformed)
	}
	if err := CheckMirrors(e.Mirrors); err != nil {
		return nil, fmt.Errorf("release envelope: %w", err)
	}
	if t := e.Targeting; t != nil && (len(t.Doc) == 0 || len(t.Doc) > MaxTargetingSize || len(t.Signature) == 0 || len(t.Signature) > MaxSignatureSize) {
		return nil, fmt.Errorf("release envelope targeting: document 1..%d bytes and a signature 1..%d bytes required: %w", MaxTargetingSize, MaxSignatureSize, ErrMalformed)
	}
	return &e, nil
}

// Open verifies the envelope's signature with kr and parses the manifest.
func (e *Envelope) Open(kr *Keyring) (*Manifest, error) {
	m, _, err := kr.VerifyManifest(e.Manifest, []byte(e.Signature))
	return m, err
}

// DeviceStatus is the retained status a device publishes on its status
// topic. The last will is the same message with Online false.
type DeviceStatus struct {
	Schema       int    `json:"schema"`
	Device       string `json:"device"`
	Profile      string `json:"profile,omitempty"`
	CPU          string `json:"cpu,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
	// Channel is the release channel the device follows (rollouts count
	// the devices of their channel).
	Channel string `json:"channel,omitempty"`
	// Labels are the device's configured labels (rollout selectors and
	// status --select match them).
	Labels Labels `json:"labels,omitempty"`
	// Broker is the broker the device published this status through
	// (scheme://host:port, no credentials), when it knows several
	// (broker.urls): which node of a cluster it is on.
	Broker string      `json:"broker,omitempty"`
	Time   time.Time   `json:"time"`
	Online bool        `json:"online"`
	Apps   []AppReport `json:"apps"`

	// KeySet is the version of the key set the device holds (§8.12; 0:
	// none), KeySetError why it refused the last one offered, ClockBehind
	// its time floor when its clock is behind it.
	KeySet      uint64     `json:"keyset,omitempty"`
	KeySetError string     `json:"keyset_error,omitempty"`
	ClockBehind *time.Time `json:"clock_behind,omitempty"`
}

// AppReport is one app's line in a device status.
type AppReport struct {
	App      string `json:"app"`
	Version  string `json:"version,omitempty"`
	Sequence uint64 `json:"sequence,omitempty"`
	State    string `json:"state,omitempty"`
	// Target is the version the device is working towards (downloading,
	// installing), empty when idle.
	Target    string          `json:"target,omitempty"`
	Progress  *ProgressReport `json:"progress,omitempty"`
	LastError string          `json:"last_error,omitempty"`
	// Note says why the device stays where it is although the channel
	// holds something newer (published only for other CPUs, say). It is
	// information for the operator, never a failure.
	Note string `json:"note,omitempty"`
	// WindowOpens is set while a downloaded release waits for the
	// device's maintenance window: when the window opens next.
	WindowOpens *time.Time `json:"window_opens,omitempty"`
	// Rollout is set while the device is a member of a rollout of this
	// app (SPEC.md §8.8): its phase in it.
	Rollout *RolloutReport `json:"rollout,omitempty"`
	// Delta says how the last release reached the device (SPEC.md
	// §8.10): "used" (the delta was applied) or "fallback: <reason>" (the
	// full release was fetched instead); empty when no delta was offered.
	// At most MaxDeltaNote bytes.
	Delta string `json:"delta,omitempty"`
}

// MaxDeltaNote bounds a status's apps[].delta (bytes).
const MaxDeltaNote = 256

// DeltaUsed is apps[].delta of a device that applied a delta.
const DeltaUsed = "used"

// ProgressReport is where an install stands: step ("download", "verify",
// "stage", ...) and done/total units of that step.
type ProgressReport struct {
	Step  string `json:"step"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
}

// Validate checks limits and names.
func (s *DeviceStatus) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("device status: "+format+": %w", append(a, ErrMalformed)...)
	}
	if s.Schema != MQTTSchemaVersion {
		return fmt.Errorf("device status schema %d, this build understands %d: %w", s.Schema, MQTTSchemaVersion, ErrSchema)
	}
	if !ValidDeviceID(s.Device) {
		return bad("device id %q is not valid", clip(s.Device))
	}
	if s.Profile != "" && !ValidProfileName(s.Profile) {
		return bad("profile %q is not valid", clip(s.Profile))
	}
	if len(s.CPU) > maxStringLen || len(s.AgentVersion) > maxStringLen || len(s.Broker) > maxStringLen || len(s.KeySetError) > MaxLastError {
		return bad("cpu, agent_version or broker longer than %d", maxStringLen)
	}
	if s.Channel != "" && !ValidChannel(s.Channel) {
		return bad("channel %q is not valid", clip(s.Channel))
	}
	if err := s.Labels.Validate(); err != nil {
		return bad("labels: %v", err)
	}
	if len(s.Apps) > MaxStatusApps {
		return bad("%d apps, at most %d", len(s.Apps), MaxStatusApps)
	}
	for i, a := range s.Apps {
		if !ValidApp(a.App) {
			return bad("app %d name %q is not valid", i, clip(a.App))
		}
		if len(a.Version) > maxStringLen || len(a.State) > 32 || len(a.Target) > maxStringLen {
			return bad("app %s: version, state or target too long", a.App)
		}
		if len(a.LastError) > MaxLastError || len(a.Note) > MaxLastError {
			return bad("app %s: last_error or note longer than %d", a.App, MaxLastError)
		}
		if len(a.Delta) > MaxDeltaNote || (a.Delta != "" && a.Delta != DeltaUsed && !strings.HasPrefix(a.Delta, "fallback: ")) {
			return bad("app %s: delta must be %q or \"fallback: <reason>\" of at most %d bytes", a.App, DeltaUsed, MaxDeltaNote)
		}
		if a.Rollout != nil {
			if err := a.Rollout.validate(); err != nil {
				return bad("app %s: %v", a.App, err)
			}
		}
		if p := a.Progress; p != nil {
			if len(p.Step) > 32 || p.Done < 0 || p.Total < 0 || p.Done > p.Total {
				return bad("app %s: progress out of range", a.App)
			}
		}
	}
	return nil
}

// Marshal validates and encodes the status, clipping an overlong
// last_error and neutralising control characters first (an error message,
// which may quote an app's output, must never stop a report).
func (s *DeviceStatus) Marshal() ([]byte, error) {
	s.cleanText()
	s.clampProgress()
	s.KeySetError = clipText(s.KeySetError, MaxLastError)
	for i := range s.Apps {
		// Cut on a character boundary (clipText): a cut rune would be sent
		// as U+FFFD, 3 bytes, and could push the text over the limit.
		s.Apps[i].LastError = clipText(s.Apps[i].LastError, MaxLastError)
		s.Apps[i].Note = clipText(s.Apps[i].Note, MaxLastError)
		s.Apps[i].Delta = clipText(s.Apps[i].Delta, MaxDeltaNote)
		if r := s.Apps[i].Rollout; r != nil {
			r.Error = clipText(r.Error, MaxLastError)
		}
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxStatusSize {
		return nil, fmt.Errorf("device status is %d bytes, more than %d: %w", len(b), MaxStatusSize, ErrTooLarge)
	}
	return b, nil
}

// ParseStatus decodes a device status strictly. An empty message means the
// retained status was cleared.
func ParseStatus(b []byte) (*DeviceStatus, error) {
	if len(b) > MaxStatusSize {
		return nil, fmt.Errorf("device status is %d bytes, more than the %d allowed: %w", len(b), MaxStatusSize, ErrTooLarge)
	}
	if err := checkSchema(b, "device status"); err != nil {
		return nil, err
	}
	var s DeviceStatus
	if err := strictJSON(b, &s); err != nil {
		return nil, fmt.Errorf("device status: %v: %w", err, ErrMalformed)
	}
	s.cleanText()
	s.clampProgress()
	s.KeySetError = clipText(s.KeySetError, MaxLastError)
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// cleanText neutralises what a terminal would interpret in the free-text
// fields: a device writes its own status, and `edgefleet status` prints it
// to an operator's terminal, where escape sequences could erase other
// devices' lines, bidi overrides could disguise a version, and invisible
// characters (U+200B, U+FEFF, ...) could make two different versions look
// alike. Line breaks (also U+2028, U+2029, U+0085), tabs and other spaces
// become ' '; control, format (Unicode category Cf, which includes the
// bidi controls), default-ignorable and variation-selector characters and
// invalid UTF-8 become '?'. The text never grows, so the limits still
// hold.
func (s *DeviceStatus) cleanText() {
	s.CPU, s.AgentVersion, s.Broker = cleanText(s.CPU), cleanText(s.AgentVersion), cleanText(s.Broker)
	s.KeySetError = cleanText(s.KeySetError)
	for i := range s.Apps {
		a := &s.Apps[i]
		a.Version, a.State, a.Target, a.LastError, a.Note = cleanText(a.Version), cleanText(a.State), cleanText(a.Target), cleanText(a.LastError), cleanText(a.Note)
		a.Delta = cleanText(a.Delta)
		if a.Progress != nil {
			a.Progress.Step = cleanText(a.Progress.Step)
		}
		if a.Rollout != nil {
			a.Rollout.Error = cleanText(a.Rollout.Error)
		}
	}
}

// clampProgress keeps every progress report within 0 <= done <= total, so
// no reader prints a negative share or more than 100%.
func (s *DeviceStatus) clampProgress() {
	for i := range s.Apps {
		if p := s.Apps[i].Progress; p != nil {
			p.Total = max(p.Total, 0)
			p.Done = min(max(p.Done, 0), p.Total)
		}
	}
}

// CleanText neutralises s for printing on a terminal as a status's free
// text is (SPEC.md §8.4): the result is never longer than s.
func CleanText(s string) string { return cleanText(s) }

// textClass says what cleanText does with r: 0 keep, ' ' or '?'.
func textClass(r rune) rune {
	switch {
	case r < 0x7f && r >= 0x20:
		return 0
	case r == '\n' || r == '\r' || r == '\t' || r == '\v' || r == '\f' || r == 0x85 ||
		unicode.In(r, unicode.Zl, unicode.Zp):
		return ' '
	case r == utf8.RuneError:
		return '?' // invalid UTF-8 (or U+FFFD itself, which is 3 bytes: the text shrinks)
	case unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Bidi_Control,
		unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector):
		return '?'
	case r != ' ' && unicode.Is(unicode.Zs, r):
		return ' '
	}
	return 0
}

func cleanText(s string) string {
	clean := true
	for _, r := range s {
		if textClass(r) != 0 {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if c := textClass(r); c != 0 {
			b.WriteByte(byte(c))
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func checkSchema(b []byte, what string) error {
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := StrictUnmarshalExtensible(b, &head); err != nil {
		return fmt.Errorf("%s is not valid JSON: %v: %w", what, err, ErrMalformed)
	}
	if head.Schema == nil {
		return fmt.Errorf("%s has no schema field: %w", what, ErrMalformed)
	}
	if *head.Schema != MQTTSchemaVersion {
		return fmt.Errorf("%s schema %d, this build understands %d; update edgefleet: %w", what, *head.Schema, MQTTSchemaVersion, ErrSchema)
	}
	return nil
}

func strictJSON(b []byte, v any) error { return StrictUnmarshal(b, v) }
