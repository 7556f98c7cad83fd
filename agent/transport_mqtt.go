package agent

// The MQTT transport (protocol/SPEC.md §MQTT, DESIGN.md decision 8): learn
// about releases from retained messages, fetch their chunks with a bounded
// window, verify each chunk against the signed hash before it touches the
// disk, record it in bbolt so a download resumes after a disconnect, a kill
// or a reboot, then install through the daemon (install, restart, trial)
// and report status, retained. Liveness is a separate retained topic
// (device/<id>/online) whose last will says "offline", so a power cut never
// erases the device's last reported versions (SPEC.md §8.4a). Decisions are
// taken on a complete view of the retained releases only: after every
// (re)subscription the device waits for its own sync marker (§8.1).

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	bolt "go.etcd.io/bbolt"
)

const (
	// mqttWindow bounds the chunk subscriptions outstanding per download:
	// memory is at most this many chunks in flight, whatever the payload.
	mqttWindow = 8
	// mqttTick is the housekeeping period: status (throttled progress),
	// retries of installs that were busy, stall checks.
	mqttTick = 500 * time.Millisecond
	// mqttStallMax caps the backoff of mqttStall (20s, 40s, … 5m) while
	// chunks stay missing.
	mqttStallMax = 5 * time.Minute
	// mqttConnLogEvery: a connection failure that persists is logged again
	// this often (a changed reason at once).
	mqttConnLogEvery = 5 * time.Minute
	// mqttEvents buffers messages between paho and the transport loop; when
	// it is full a message is dropped and everything is re-subscribed.
	mqttEvents = 64
)

// Retry rules (SPEC.md §8.7). Variables so that tests can shorten them.
var (
	// mqttRetryMin and mqttRetryMax bound the backoff after a transient
	// failure of a release (storage full, I/O, state database): 30s, 1m,
	// 2m… up to 10m, until it installs or another release replaces it.
	mqttRetryMin = 30 * time.Second
	mqttRetryMax = 10 * time.Minute
	// mqttBusyRetry: a release that arrives while the app is on trial (or
	// another install runs) is tried again this often, without counting as
	// a failure: the trial normally ends within its health window.
	mqttBusyRetry = 2 * time.Second
	// mqttChunkTries: a chunk whose bytes do not match the signed hash is
	// asked for again at once, up to this many bad copies in a row; then
	// the broker's copy is declared corrupt and the release waits (backoff,
	// or at once when the release is published again).
	mqttChunkTries = 3
	// mqttDropEvent, set only by tests, drops events of the kinds it
	// returns true for, as a full event buffer would.
	mqttDropEvent func(kind string) bool
	// mqttLoseMessage, set only by tests, loses messages silently (no
	// resync), as a broker node that admitted the device before loading
	// its retained set does (DESIGN.md, NATS).
	mqttLoseMessage func(topic string) bool
	// mqttStall: with chunks outstanding and none arriving for this long,
	// subscribe to them again (the broker re-delivers retained messages)
	// and say in the status which chunks are missing. The wait doubles
	// while nothing comes, up to mqttStallMax. A chunk that arrives
	// corrupt is asked for again at once (mqttChunkTries).
	mqttStall = 20 * time.Second
	// mqttSyncTimeout bounds the wait for the device's sync marker: a
	// broker whose ACL does not let the device echo it (an older ACL file)
	// must not leave the device undecided. The releases received by then
	// are merged into the view (nothing is removed from it).
	mqttSyncTimeout = 15 * time.Second
	// mqttRefresh: the release topics are read again (unsubscribe,
	// subscribe, marker) this long after each connect, so a broker node
	// that served a stale or empty retained set right after a restart is
	// not believed for long; then every mqttRefreshEvery (±10 %).
	mqttRefresh      = []time.Duration{30 * time.Second, 5 * time.Minute}
	mqttRefreshEvery = 6 * time.Hour
	// mqttHeartbeat: the retained status is published again at least this
	// often while connected, so its time is the device's last contact
	// (within this period) after the device disappears.
	mqttHeartbeat = 5 * time.Minute
	// mqttStateReserve is the free space a download always leaves in
	// data_dir for the state database and the floor file: a download must
	// never make an install, a sideload or a rollback fail to record.
	mqttStateReserve int64 = 4 << 20
)

var bucketDownloads = []byte("mqtt-downloads")

// MQTTStats counts what the transport did since it started (tests and
// benchmarks).
type MQTTStats struct {
	ChunksReceived atomic.Int64 // chunk messages that verified and were written
	ChunksBad      atomic.Int64 // chunk messages that failed their hash
	ChunkBytes     atomic.Int64
	Resumed        atomic.Int64 // chunks found already downloaded at start
	Dropped        atomic.Int64 // malformed or unexpected messages
}

// dlRecord is the persisted progress of one app's download (bucket
// mqtt-downloads, key app name).
type dlRecord struct {
	Schema   int    `json:"schema"`
	SHA256   string `json:"sha256"` // payload sha256
	Version  string `json:"version"`
	Sequence uint64 `json:"sequence"`
	Have     []byte `json:"have"` // bitmap of verified, written chunks
}

type mqttRelease struct {
	topic string
	env   *protocol.Envelope
	m     *protocol.Manifest
	// id is the sha256 of the signed manifest bytes: what a refusal is
	// remembered by (expiry, target and probe belong to the manifest; a
	// renewed manifest for the same reproducible payload is a new try).
	id string
	// candidate: offered by a rollout (candidate topic), not the channel.
	candidate bool
}

type mqttDownload struct {
	rel         *mqttRelease
	path        string
	f           *os.File
	have        []bool
	n           int // chunks in have
	outstanding map[int]string
	bad         map[int]int // corrupt copies received in a row, per chunk
	lastChunk   time.Time
	complete    bool
	stalls      int // consecutive stall checks without a chunk
}

// mqttHold pauses one release (by payload sha256) after a failure that
// may pass: nothing is fetched or installed for it before until.
type mqttHold struct {
	sha       string
	attempts  int // transient failures so far (the backoff exponent)
	until     time.Time
	chunk     bool // held for a corrupt chunk: a new delivery of the release ends the hold
	refetches int  // whole-payload mismatches after a complete download
}

type mqttApp struct {
	cfg        *AppConfig
	channel    map[string]*mqttRelease // profile → release
	desired    *mqttRelease
	dl         *mqttDownload
	installing bool
	profile    string
	lastErr    string
	stallErr   bool              // lastErr is the missing-chunks report (cleared when chunks flow)
	behind     string            // why the device does not take the channel's newest release ("" when it does)
	failed     map[string]string // signed manifest sha256 → why it was refused for good (until the agent restarts)
	hold       *mqttHold
	// pending collects the release and desired messages of a sync round;
	// the view (channel, desired) is replaced by it when the round's
	// marker arrives.
	pending        map[string]*mqttRelease
	pendingDesired *mqttRelease
	// The app's rollout on the device's channel (transport_rollout.go):
	// its control message (nil: none) and its candidates by profile, with
	// their sync-round counterparts.
	rollout           *protocol.Rollout
	candidates        map[string]*mqttRelease
	pendingRollout    *protocol.Rollout
	pendingCandidates map[string]*mqttRelease
	rolloutLog        string // the last rollout situation logged
	// waitOpens is when the maintenance window opens next while a
	// complete download waits for it (zero otherwise); waitLogged the
	// payload whose wait was logged (window.go).
	waitOpens  time.Time
	waitLogged string
}

type mqttEvent struct {
	kind    string // "connected", "connfail", "lost", "msg", "installed", "published"
	topic   string
	payload []byte
	app     string
	err     error
}

type mqttTransport struct {
	d      *Daemon
	cfg    *Config
	logf   func(string, ...any)
	client paho.Client
	events chan mqttEvent
	resync atomic.Bool
	apps   map[string]*mqttApp
	stats  *MQTTStats
	conn   mqttConn // transport_conn.go

	lastStatus    string
	lastPublished time.Time
	connected     bool
	connErr       string // last connection failure logged
	connErrAt     time.Time
	statusTopic   string
	presenceTopic string
	syncTopic     string
	// A sync round: the marker nonce sent after subscribing ("" when no
	// round runs) and when it started.
	syncNonce  string
	syncStart  time.Time
	syncWarned bool // the marker timed out once (logged once per process)
	// refreshAt is when the release topics are read again; refreshN
	// counts the reads since the last connect.
	refreshAt time.Time
	refreshN  int
	// subFailed: a subscription failed on this connection (logged once per
	// connection; housekeeping subscribes again).
	subFailed  atomic.Bool
	subLogged  atomic.Bool
	dropLogged bool
	// missed: a release arrived while the state database was unusable
	// (degraded daemon) and could not be verified; once a reset brings
	// the state back, every release is asked for again.
	missed bool
}

// mqttStatsHook lets tests read the counters of the transport started by a
// daemon (keyed by device id).
var mqttStatsHook sync.Map // device id → *MQTTStats

// startMQTT is the daemon's hook: when the configuration has a broker, run
// the transport until ctx is done. Run waits for it at shutdown.
func (d *Daemon) startMQTT(ctx context.Context) {
	if d.cfg.Broker == nil {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		// A transport that cannot start (a certificate not provisioned
		// yet, an unreadable CA file) is tried again with the transient
		// backoff rather than leaving the device deaf until a restart.
		for attempt := 1; ; attempt++ {
			t, err := newMQTTTransport(d)
			if err == nil {
				t.run(ctx)
				return
			}
			delay := retryDelay(attempt)
			d.logf("mqtt: cannot start: %v; trying again in %s", err, delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
	}()
}

func newMQTTTransport(d *Daemon) (*mqttTransport, error) {
	bc := d.cfg.Broker
	if len(bc.Servers()) == 0 {
		return nil, errNoBroker
	}
	if bc.Channel == "" {
		bc.Channel = "stable"
	}
	if !protocol.ValidChannel(bc.Channel) {
		return nil, fmt.Errorf("broker.channel %q is not a valid channel name", bc.Channel)
	}
	if err := protocol.CheckDeviceID(d.cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("device_id: %v", err)
	}
	t := &mqttTransport{d: d, cfg: d.cfg, logf: d.logf, events: make(chan mqttEvent, mqttEvents), apps: map[string]*mqttApp{}, stats: &MQTTStats{}}
	mqttStatsHook.Store(d.cfg.DeviceID, t.stats)
	for i := range d.cfg.Apps {
		c := &d.cfg.Apps[i]
		t.apps[c.Name] = &mqttApp{cfg: c, channel: map[string]*mqttRelease{}, candidates: map[string]*mqttRelease{}, failed: map[string]string{}}
	}
	tlsConf, err := mqttTLS(bc)
	if err != nil {
		return nil, err
	}
	for _, u := range bc.Servers() {
		if tlsConf != nil && strings.HasPrefix(u, "tcp://") {
			// paho ignores the TLS settings for tcp://: the password and
			// everything else would go in clear.
			return nil, fmt.Errorf("broker URL %s is plain tcp:// but broker.ca/cert/key are set; use ssl://host:8883 for TLS", redactURL(u))
		}
	}
	t.statusTopic, _ = protocol.StatusTopic(d.cfg.DeviceID)
	t.presenceTopic, _ = protocol.PresenceTopic(d.cfg.DeviceID)
	t.syncTopic, _ = protocol.SyncTopic(d.cfg.DeviceID)
	o := paho.NewClientOptions().
		SetClientID(d.cfg.DeviceID).
		SetCleanSession(false).
		SetStore(paho.NewMemoryStore()). // FileStore panics on a full disk
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(30*time.Second).
		SetKeepAlive(30*time.Second).
		SetConnectTimeout(10*time.Second).
		SetWriteTimeout(30*time.Second).
		SetOrderMatters(true).
		SetBinaryWill(t.presenceTopic, t.presenceBytes(false), 1, true).
		SetDefaultPublishHandler(t.onMessage).
		// 3.1.1 only: without this paho retries a refused CONNECT as MQTT
		// 3.1 and the broker's reason (bad credentials) is replaced by
		// "unacceptable protocol version".
		SetProtocolVersion(4).
		SetOnConnectHandler(func(paho.Client) { t.post(mqttEvent{kind: "connected", topic: t.dialed()}) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) { t.post(mqttEvent{kind: "lost", err: err}) }).
		SetReconnectingHandler(func(_ paho.Client, o *paho.ClientOptions) {
			// The will says offline, stamped with this connection's start.
			o.SetBinaryWill(t.presenceTopic, t.presenceBytes(false), 1, true)
		})
	t.addBrokers(o) // transport_conn.go
	if bc.Username != "" {
		o.SetUsername(bc.Username).SetPassword(bc.Password)
	}
	if tlsConf != nil {
		o.SetTLSConfig(tlsConf)
	}
	t.client = paho.NewClient(o)
	return t, nil
}

// post hands an event to the loop without ever blocking paho: when the
// buffer is full the event is dropped and the loop re-subscribes, which
// makes the broker send every retained message again.
func (t *mqttTransport) post(ev mqttEvent) {
	if mqttDropEvent != nil && mqttDropEvent(ev.kind) {
		t.resync.Store(true)
		return
	}
	select {
	case t.events <- ev:
	default:
		t.resync.Store(true)
	}
}

func (t *mqttTransport) onMessage(_ paho.Client, m paho.Message) {
	if mqttLoseMessage != nil && mqttLoseMessage(m.Topic()) {
		return
	}
	t.post(mqttEvent{kind: "msg", topic: m.Topic(), payload: m.Payload()})
}

func (t *mqttTransport) agent() *Agent { return t.d.agent() }

func (t *mqttTransport) run(ctx context.Context) {
	t.logf("mqtt: connecting to %s as %s (channel %s)", t.brokerList(), t.cfg.DeviceID, t.cfg.Broker.Channel)
	t.client.Connect() // retries in the background (SetConnectRetry)
	tick := time.NewTicker(mqttTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.shutdown()
			return
		case ev := <-t.events:
			t.handle(ctx, ev)
		case <-tick.C:
			t.housekeeping(ctx)
		}
	}
}

func (t *mqttTransport) shutdown() {
	if t.connected {
		// A clean stop: the last state, then offline with this moment as
		// the last contact.
		t.client.Publish(t.statusTopic, 1, true, t.statusBytes())
		tok := t.client.Publish(t.presenceTopic, 1, true, t.presenceBytes(false))
		tok.WaitTimeout(2 * time.Second)
	}
	t.client.Disconnect(250)
	for _, ap := range t.apps {
		if ap.dl != nil && ap.dl.f != nil {
			ap.dl.f.Close()
		}
	}
	t.logf("mqtt: disconnected")
}

func (t *mqttTransport) handle(ctx context.Context, ev mqttEvent) {
	switch ev.kind {
	case "connected":
		t.connected = true
		t.connErr = ""
		t.subFailed.Store(false)
		t.subLogged.Store(false)
		t.dropLogged = false
		t.logf("mqtt: connected to %s", t.onConnected(ev.topic))
		t.confirm("presence", t.client.Publish(t.presenceTopic, 1, true, t.presenceBytes(true)))
		t.refreshN = 0
		t.refreshAt = time.Now().Add(refreshDelay(0))
		t.subscribeAll()
		t.lastStatus = ""
		t.publishStatus()
	case "connfail":
		// paho retries with backoff; say why, once per distinct reason
		// (and again every mqttConnLogEvery while it lasts).
		t.connFailed(ev.err) // transport_conn.go
	case "lost":
		if !t.connected {
			return // one line per state change
		}
		t.connected = false
		t.logf("mqtt: connection to %s lost (%v); reconnecting", t.conn.broker, ev.err)
	case "msg":
		t.message(ctx, ev.topic, ev.payload)
	case "installed":
		t.installed(ctx, ev.app, ev.err)
	case "published":
		t.published(ev.topic, ev.err) // transport_conn.go
	}
}

// subscribeAll starts a sync round: it subscribes (again) to the release
// and desired topics and to the device's sync topic, and once the broker
// acknowledges, sends the round's marker there. The releases delivered
// before the marker are the complete retained set: the view is replaced
// by them when the marker arrives (syncDone), and nothing is decided on a
// partial view before that (SPEC.md §8.1).
func (t *mqttTransport) subscribeAll() {
	subs := map[string]byte{}
	var filters []string
	for name := range t.apps {
		if f, err := protocol.ReleaseFilter(t.cfg.Broker.Channel, name); err == nil {
			subs[f] = 0
			filters = append(filters, f)
		}
		// The app's rollout: control message and candidates (§8.8).
		if fs, err := protocol.RolloutFilters(t.cfg.Broker.Channel, name); err == nil {
			for _, f := range fs {
				subs[f] = 0
				filters = append(filters, f)
			}
		}
	}
	desired := protocol.TopicPrefix + "device/" + t.cfg.DeviceID + "/desired/+"
	subs[desired] = 0
	filters = append(filters, desired)
	subs[t.syncTopic] = 0
	nonce := randomHex(8)
	t.syncNonce, t.syncStart = nonce, time.Now()
	for _, ap := range t.apps {
		ap.pending, ap.pendingDesired = map[string]*mqttRelease{}, nil
		ap.pendingRollout, ap.pendingCandidates = nil, map[string]*mqttRelease{}
	}
	// Unsubscribe first: a broker need not send the retained messages
	// again for a subscription it already has (a resumed session).
	t.client.Unsubscribe(filters...)
	tok := t.client.SubscribeMultiple(subs, t.onMessage)
	go func() {
		if !tok.WaitTimeout(mqttSyncTimeout) || tok.Error() != nil {
			t.subscribeFailed(tok.Error())
			return
		}
		t.client.Publish(t.syncTopic, 0, false, []byte(nonce))
	}()
	for _, ap := range t.apps {
		if ap.dl != nil {
			t.resubscribeChunks(ap.dl)
		}
	}
}

// subscribeFailed notes a failed subscription: logged once per
// connection, subscribed again by housekeeping while connected.
func (t *mqttTransport) subscribeFailed(err error) {
	if err == nil {
		err = errors.New("no SUBACK from the broker")
	}
	if !t.subLogged.Swap(true) {
		t.logf("mqtt: subscribe: %v; subscribing again while connected", err)
	}
	t.subFailed.Store(true)
}

// syncDone ends a sync round. complete: the marker arrived, so the
// round's releases are the whole retained set and replace the view
// (releases retired while the device was away disappear). Otherwise (the
// marker never came) they are merged into it.
func (t *mqttTransport) syncDone(ctx context.Context, complete bool) {
	t.syncNonce = ""
	for _, ap := range t.apps {
		if ap.pending == nil {
			continue
		}
		if complete {
			ap.channel, ap.desired = ap.pending, ap.pendingDesired
			ap.rollout, ap.candidates = ap.pendingRollout, ap.pendingCandidates
		} else {
			for k, v := range ap.pending {
				ap.channel[k] = v
			}
			if ap.pendingDesired != nil {
				ap.desired = ap.pendingDesired
			}
			for k, v := range ap.pendingCandidates {
				ap.candidates[k] = v
			}
			if ap.pendingRollout != nil {
				ap.rollout = ap.pendingRollout
			}
		}
		for _, rel := range ap.channel {
			t.redelivered(ap, rel)
		}
		for _, rel := range ap.candidates {
			t.redelivered(ap, rel)
		}
		t.logRollout(ap)
		if ap.desired != nil {
			t.redelivered(ap, ap.desired)
		}
		ap.pending, ap.pendingDesired = nil, nil
		ap.pendingRollout, ap.pendingCandidates = nil, nil
		t.evaluate(ctx, ap)
	}
}

// refreshDelay is the wait before the n-th re-read of the release topics
// after a connect.
func refreshDelay(n int) time.Duration {
	if n < len(mqttRefresh) {
		return mqttRefresh[n]
	}
	jitter := time.Duration(mrand.Int64N(int64(mqttRefreshEvery)/5+1)) - mqttRefreshEvery/10
	return mqttRefreshEvery + jitter
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// subscribe subscribes at QoS 0 (SPEC.md: everything that matters is
// retained). A failure is retried by housekeeping.
func (t *mqttTransport) subscribe(subs map[string]byte) {
	if len(subs) == 0 {
		return
	}
	tok := t.client.SubscribeMultiple(subs, t.onMessage)
	go func() {
		if tok.Wait(); tok.Error() != nil {
			t.subscribeFailed(tok.Error())
		}
	}()
}

func (t *mqttTransport) resubscribeChunks(dl *mqttDownload) {
	if len(dl.outstanding) == 0 {
		return
	}
	topics := make([]string, 0, len(dl.outstanding))
	subs := map[string]byte{}
	for _, tp := range dl.outstanding {
		topics = append(topics, tp)
		subs[tp] = 0
	}
	// Unsubscribe first: subscribing again to a subscribed topic does not
	// re-deliver the retained message on every broker.
	t.client.Unsubscribe(topics...)
	t.subscribe(subs)
	dl.lastChunk = time.Now()
}

func (t *mqttTransport) message(ctx context.Context, topic string, payload []byte) {
	tp, err := protocol.ParseTopic(topic)
	if err != nil {
		t.stats.Dropped.Add(1)
		t.logf("mqtt: dropped a message: %v", err)
		return
	}
	switch tp.Kind {
	case protocol.KindRelease:
		ap := t.apps[tp.App]
		if ap == nil || tp.Channel != t.cfg.Broker.Channel {
			return
		}
		rel := t.parseRelease(ap, topic, payload)
		if rel == nil && len(payload) > 0 {
			return
		}
		view := ap.channel
		if ap.pending != nil {
			view = ap.pending // a sync round: decide when it is complete
		}
		if rel == nil {
			delete(view, tp.Profile)
		} else {
			view[tp.Profile] = rel
		}
		if ap.pending != nil {
			return
		}
		if rel != nil {
			t.redelivered(ap, rel)
		}
		t.evaluate(ctx, ap)
	case protocol.KindDesired:
		ap := t.apps[tp.App]
		if ap == nil || tp.Device != t.cfg.DeviceID {
			return
		}
		rel := t.parseRelease(ap, topic, payload)
		if rel == nil && len(payload) > 0 {
			return
		}
		if ap.pending != nil {
			ap.pendingDesired = rel
			return
		}
		ap.desired = rel
		if rel != nil {
			t.redelivered(ap, rel)
		}
		t.evaluate(ctx, ap)
	case protocol.KindRollout:
		t.rolloutMessage(ctx, tp, topic, payload)
	case protocol.KindCandidate:
		t.candidateMessage(ctx, tp, topic, payload)
	case protocol.KindChunk:
		t.chunk(ctx, tp, payload)
	case protocol.KindSync:
		if tp.Device == t.cfg.DeviceID && t.syncNonce != "" && string(payload) == t.syncNonce {
			t.syncDone(ctx, true)
		}
	default:
		t.stats.Dropped.Add(1)
	}
}

// parseRelease parses and verifies an envelope; nil for an empty message
// or (logged, reported) a bad one.
func (t *mqttTransport) parseRelease(ap *mqttApp, topic string, payload []byte) *mqttRelease {
	if len(payload) == 0 {
		return nil
	}
	env, err := protocol.ParseEnvelope(payload)
	if err == nil {
		a := t.agent()
		if a == nil {
			t.missed = true
			return nil
		}
		var m *protocol.Manifest
		if m, err = env.Open(a.keys); err == nil {
			if m.App != ap.cfg.Name {
				err = fmt.Errorf("the release on %s is for app %q: %w", topic, m.App, protocol.ErrMalformed)
			} else {
				sum := sha256.Sum256(env.Manifest)
				return &mqttRelease{topic: topic, env: env, m: m, id: hex.EncodeToString(sum[:])}
			}
		}
	}
	t.stats.Dropped.Add(1)
	t.logf("mqtt: dropped the release on %s: %v", topic, err)
	ap.lastErr = fmt.Sprintf("release on %s ignored: %v", topic, err)
	return nil
}

// choose picks the release for ap: the device's desired one, else from
// the channel's releases (with a running rollout's candidates overlaid
// when the device is a member: releases) the one for the configured
// profile, else the most specific published profile this CPU runs.
func (t *mqttTransport) choose(a *Agent, ap *mqttApp) (*mqttRelease, error) {
	if ap.desired != nil {
		return ap.desired, nil
	}
	rel, profile, err := t.pick(a, t.releases(ap))
	if profile != "" {
		ap.profile = profile
	}
	return rel, err
}

// pick chooses from the releases ch (profile → release): the configured
// profile's, else the most specific profile this CPU runs. It returns
// the profile picked.
func (t *mqttTransport) pick(a *Agent, ch map[string]*mqttRelease) (*mqttRelease, string, error) {
	if len(ch) == 0 {
		return nil, "", nil
	}
	if t.cfg.Profile != "" {
		return ch[t.cfg.Profile], t.cfg.Profile, nil
	}
	names := make([]string, 0, len(ch))
	for n := range ch {
		names = append(names, n)
	}
	sort.Strings(names)
	best, err := hardware.BestProfile(a.CPU(), names, hardware.DefaultSet())
	if err == nil {
		return ch[best], best, nil
	}
	// Custom profile names: decide from the signed targets themselves.
	for _, n := range names {
		if a.CPU().CanRun(targetOf(ch[n].m.Target)) == nil {
			return ch[n], n, nil
		}
	}
	return nil, "", err
}

// behindNote says why this device does not work towards the newest
// release published on the channel for ap (the highest sequence across
// profiles) although it takes an older one (rel): the newest is published
// only for profiles this CPU cannot run, or only for a less specific one
// than the profile the device picks, or not for the configured profile.
// "" when the device is not behind (or follows a desired release, which
// the operator chose for it).
func (t *mqttTransport) behindNote(a *Agent, ap *mqttApp, rel *mqttRelease) string {
	ch := t.releases(ap)
	if ap.desired != nil || len(ch) == 0 {
		return ""
	}
	if rel == nil && t.cfg.Profile == "" {
		return "" // nothing runs here at all: choose says why
	}
	var newest, taken uint64
	for _, r := range ch {
		newest = max(newest, r.m.Sequence)
	}
	if rel != nil {
		taken = rel.m.Sequence
	}
	if taken >= newest {
		return ""
	}
	if floor, err := a.mqttFloor(ap.cfg.Name); err != nil || floor >= newest {
		return "" // already has it (a sideload, say), or cannot tell
	}
	var names []string
	for n, r := range ch {
		if r.m.Sequence == newest {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	n0 := ch[names[0]].m
	head := fmt.Sprintf("%s %s (sequence %d) is published only for %s", n0.App, n0.Version, newest, strings.Join(names, ", "))
	if t.cfg.Profile != "" {
		keeps := "nothing is published for it"
		if rel != nil {
			keeps = fmt.Sprintf("its newest is %s (sequence %d)", rel.m.Version, rel.m.Sequence)
		}
		return fmt.Sprintf("%s, not for %s, the profile in this device's config (%s); publish a %s build, or change profile: in the agent config", head, t.cfg.Profile, keeps, t.cfg.Profile)
	}
	keeps := fmt.Sprintf("%s (sequence %d, %s)", rel.m.Version, rel.m.Sequence, ap.profile)
	// Why this CPU cannot run any of them: the reason for the build of
	// this CPU's architecture says the most.
	var why error
	for _, n := range names {
		tg := targetOf(ch[n].m.Target)
		err := a.CPU().CanRun(tg)
		if err == nil {
			return fmt.Sprintf("%s, which this CPU runs, but the most specific profile published for it is %s, whose newest is %s; publish %s %s for %s too, or retire the older %s release", head, ap.profile, keeps, n0.App, n0.Version, ap.profile, ap.profile)
		}
		if why == nil || tg.GOARCH == a.CPU().GOARCH {
			why = err
		}
	}
	return fmt.Sprintf("%s, so the newest this device can run is %s: %v", head, keeps, why)
}

// setBehind records ap's behind note (shown in its status), logging a
// change.
func (t *mqttTransport) setBehind(ap *mqttApp, note string) {
	if note != ap.behind && note != "" {
		t.logf("mqtt: %s", note)
	}
	ap.behind = note
}

// evaluate decides whether ap needs a download, and starts or continues it.
func (t *mqttTransport) evaluate(ctx context.Context, ap *mqttApp) {
	a := t.agent()
	if a == nil {
		return
	}
	rel, err := t.choose(a, ap)
	note := t.behindNote(a, ap, rel)
	if err != nil {
		// Nothing on the channel runs on this CPU: the device keeps what
		// it runs. Information for the operator, never a failure.
		note = err.Error()
	}
	t.setBehind(ap, note)
	if err != nil {
		return
	}
	if rel == nil {
		if ap.dl != nil && ap.dl.rel.candidate && !ap.installing {
			// The rollout was paused, halted or aborted, or the device is
			// no longer a member: no new start (SPEC.md §8.8).
			t.logf("mqtt: %s: abandoning the download of %s: its rollout no longer offers it to this device", ap.cfg.Name, ap.dl.rel.m.Version)
			t.abandon(ap)
		}
		return
	}
	m := rel.m
	sha := m.Payload.SHA256
	if _, bad := ap.failed[rel.id]; bad {
		return // refused for good; the reason stays in the status
	}
	if h := ap.hold; h != nil {
		if h.sha != sha {
			ap.hold = nil // another release replaced the held one
		} else if time.Now().Before(h.until) {
			return
		}
	}
	floor, err := a.mqttFloor(ap.cfg.Name)
	if err != nil {
		ap.lastErr = err.Error()
		return
	}
	if m.Sequence <= floor {
		if ap.dl != nil && !ap.installing {
			if ap.dl.rel.candidate && !rel.candidate {
				t.logf("mqtt: %s: abandoning the download of %s: its rollout no longer offers it to this device", ap.cfg.Name, ap.dl.rel.m.Version)
			}
			t.abandon(ap)
		}
		return
	}
	if ap.dl != nil && ap.dl.rel.m.Payload.SHA256 == sha {
		ap.dl.rel = rel
		t.fill(ctx, ap)
		return
	}
	if ap.installing {
		return // decide again when the running install ends
	}
	if ap.dl != nil {
		t.logf("mqtt: %s: abandoning the download of %s for %s", ap.cfg.Name, ap.dl.rel.m.Version, m.Version)
		t.abandon(ap)
	}
	// Refuse what can never install before fetching a byte.
	if err := m.CheckExpiry(time.Now()); err != nil {
		t.refuse(a, ap, rel, err)
		return
	}
	if err := a.CPU().CanRun(targetOf(m.Target)); err != nil {
		t.refuse(a, ap, rel, fmt.Errorf("%s %s: %w", m.App, m.Version, err))
		return
	}
	if err := a.checkDecoderMemory(m); err != nil {
		t.refuse(a, ap, rel, err)
		return
	}
	dl, err := t.openDownload(a, ap, rel)
	if err != nil {
		if !errors.Is(err, ErrNoSpace) {
			err = fmt.Errorf("cannot prepare the download: %w", err)
		}
		t.transient(ap, m, err, false)
		return
	}
	ap.dl = dl
	if ap.hold == nil {
		ap.lastErr = ""
	}
	t.logf("mqtt: %s: fetching %s (sequence %d, %d chunks, %d already here)", ap.cfg.Name, m.Version, m.Sequence, len(m.Payload.Chunks), dl.n)
	t.fill(ctx, ap)
}

// refuse refuses a release before its download: reported, recorded in
// the app's history, and never fetched again by this process.
func (t *mqttTransport) refuse(a *Agent, ap *mqttApp, rel *mqttRelease, err error) {
	t.fatal(ap, rel, err)
	a.recordRefusal(ap.cfg, rel.m, err)
}

// fatal drops a release for good (agent.Fatal: bad signature, wrong CPU,
// older sequence, failed probe…): retrying the same bytes gives the same
// answer. Its download is removed; a different release (another payload)
// is considered as usual. The refusal is remembered by the signed
// manifest's hash: a renewed manifest (new expiry, probe or target) for the
// same payload is tried. A restart of the agent tries once more.
func (t *mqttTransport) fatal(ap *mqttApp, rel *mqttRelease, err error) {
	m := rel.m
	ap.lastErr = fmt.Sprintf("%s %s refused: %v", m.App, m.Version, err)
	ap.stallErr = false
	ap.failed[rel.id] = ap.lastErr
	if ap.hold != nil && ap.hold.sha == m.Payload.SHA256 {
		ap.hold = nil
	}
	if ap.dl != nil && ap.dl.rel.m.Payload.SHA256 == m.Payload.SHA256 {
		t.abandon(ap)
	}
	t.logf("mqtt: %s", ap.lastErr)
}

// holdFor returns ap's hold for payload sha, making a fresh one.
func (ap *mqttApp) holdFor(sha string) *mqttHold {
	if ap.hold == nil || ap.hold.sha != sha {
		ap.hold = &mqttHold{sha: sha}
	}
	return ap.hold
}

// transient pauses a release after a failure that may pass (storage full,
// I/O, a corrupt chunk on the broker): what was downloaded is kept, and
// the release is tried again after a backoff of mqttRetryMin doubling up
// to mqttRetryMax. chunk marks a corrupt broker copy, which a new delivery
// of the release (the operator publishing it again) also ends.
func (t *mqttTransport) transient(ap *mqttApp, m *protocol.Manifest, err error, chunk bool) {
	h := ap.holdFor(m.Payload.SHA256)
	h.attempts++
	h.chunk = chunk
	d := retryDelay(h.attempts)
	h.until = time.Now().Add(d)
	if ap.dl != nil {
		t.pause(ap.dl)
	}
	what := fmt.Sprintf("%s %s: ", m.App, m.Version)
	if strings.HasPrefix(err.Error(), what) {
		what = "" // the install pipeline's errors name the release already
	}
	ap.lastErr = fmt.Sprintf("%s%v (attempt %d; retrying in %s)", what, err, h.attempts, d)
	ap.stallErr = false
	t.logf("mqtt: %s", ap.lastErr)
}

// busy waits mqttBusyRetry before trying to install again (the app is on
// trial or another install runs); not a failure, not reported.
func (t *mqttTransport) busy(ap *mqttApp, m *protocol.Manifest) {
	h := ap.holdFor(m.Payload.SHA256)
	h.until = time.Now().Add(mqttBusyRetry)
}

// redelivered: the release message for rel arrived again (published
// again, or re-sent after a reconnect). A release held for a corrupt chunk
// is retried at once: the broker's copy may have been fixed.
func (t *mqttTransport) redelivered(ap *mqttApp, rel *mqttRelease) {
	if h := ap.hold; h != nil && h.chunk && h.sha == rel.m.Payload.SHA256 && time.Now().Before(h.until) {
		t.logf("mqtt: %s %s was delivered again; asking for its chunks again", rel.m.App, rel.m.Version)
		h.until = time.Time{}
	}
}

// retryDelay is the backoff after n transient failures.
func retryDelay(n int) time.Duration {
	d := mqttRetryMin
	for i := 1; i < n && d < mqttRetryMax; i++ {
		d *= 2
	}
	return min(d, mqttRetryMax)
}

// pause stops fetching dl's chunks (a hold); fill starts again.
func (t *mqttTransport) pause(dl *mqttDownload) {
	var topics []string
	for _, tp := range dl.outstanding {
		topics = append(topics, tp)
	}
	if len(topics) > 0 {
		t.client.Unsubscribe(topics...)
	}
	clear(dl.outstanding)
	clear(dl.bad)
}

func (t *mqttTransport) openDownload(a *Agent, ap *mqttApp, rel *mqttRelease) (*mqttDownload, error) {
	m := rel.m
	dir := filepath.Join(t.cfg.DataDir, "dl")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, ap.cfg.Name+"-"+m.Payload.SHA256+".part")
	rec, err := a.loadDownload(ap.cfg.Name)
	if err != nil {
		return nil, err
	}
	n := len(m.Payload.Chunks)
	dl := &mqttDownload{rel: rel, path: path, have: make([]bool, n), outstanding: map[int]string{}, bad: map[int]int{}, lastChunk: time.Now()}
	if rec != nil && rec.SHA256 == m.Payload.SHA256 {
		for i := 0; i < n; i++ {
			if i/8 < len(rec.Have) && rec.Have[i/8]&(1<<(i%8)) != 0 {
				dl.have[i] = true
				dl.n++
			}
		}
	} else {
		// Another release's leftovers.
		if rec != nil {
			os.Remove(filepath.Join(dir, ap.cfg.Name+"-"+rec.SHA256+".part"))
		}
		if err := a.saveDownload(ap.cfg.Name, &dlRecord{Schema: 1, SHA256: m.Payload.SHA256, Version: m.Version, Sequence: m.Sequence}); err != nil {
			return nil, err
		}
	}
	// Only what is still missing needs space: the part file is sparse and
	// already holds the chunks downloaded before.
	if err := t.checkSpace(a, m, m.Payload.Size-dl.doneBytes()); err != nil {
		return nil, err
	}
	f, err := openPartFile(path) // never through a link (safefile.go)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() < m.Payload.Size && dl.n > 0 {
		// Recorded chunks must be in the file; a short file means the record
		// is not to be trusted (never happens with fsync before record).
		for i := range dl.have {
			if dl.have[i] && int64(i)*m.Payload.ChunkSize+m.Payload.ChunkLen(i) > fi.Size() {
				dl.have[i] = false
				dl.n--
			}
		}
	}
	if err := f.Truncate(m.Payload.Size); err != nil {
		f.Close()
		return nil, err
	}
	dl.f = f
	t.stats.Resumed.Add(int64(dl.n))
	dl.complete = dl.n == n
	return dl, nil
}

// abandon drops ap's download and its file.
func (t *mqttTransport) abandon(ap *mqttApp) {
	dl := ap.dl
	if dl == nil {
		return
	}
	var topics []string
	for _, tp := range dl.outstanding {
		topics = append(topics, tp)
	}
	if len(topics) > 0 {
		t.client.Unsubscribe(topics...)
	}
	if dl.f != nil {
		dl.f.Close()
	}
	os.Remove(dl.path)
	if a := t.agent(); a != nil {
		a.saveDownload(ap.cfg.Name, nil)
	}
	ap.dl = nil
	ap.waitOpens = time.Time{}
}

// fill keeps up to mqttWindow chunk subscriptions outstanding, or installs
// when every chunk is here.
func (t *mqttTransport) fill(ctx context.Context, ap *mqttApp) {
	dl := ap.dl
	if dl == nil {
		return
	}
	if dl.n == len(dl.have) {
		dl.complete = true // also when the last chunk was written but its record failed
	}
	if dl.complete {
		if !t.windowOpen(ap) {
			return // housekeeping installs when the maintenance window opens
		}
		t.install(ctx, ap)
		return
	}
	subs := map[string]byte{}
	for i := range dl.have {
		if len(dl.outstanding) >= mqttWindow {
			break
		}
		if dl.have[i] {
			continue
		}
		if _, ok := dl.outstanding[i]; ok {
			continue
		}
		tp, err := protocol.ChunkTopic(dl.rel.m.App, dl.rel.m.Payload.SHA256, i)
		if err != nil {
			continue
		}
		dl.outstanding[i] = tp
		subs[tp] = 0
	}
	if len(subs) > 0 && len(dl.outstanding) == len(subs) {
		dl.lastChunk = time.Now()
	}
	t.subscribe(subs)
}

func (t *mqttTransport) chunk(ctx context.Context, tp protocol.Topic, payload []byte) {
	ap := t.apps[tp.App]
	if ap == nil || ap.dl == nil || ap.dl.rel.m.Payload.SHA256 != tp.SHA256 {
		return // a late delivery for something no longer wanted
	}
	dl := ap.dl
	topic, ok := dl.outstanding[tp.Index]
	if !ok || dl.have[tp.Index] {
		return
	}
	p := &dl.rel.m.Payload
	if err := t.checkChunkSpace(ap, len(payload)); err != nil {
		t.transient(ap, dl.rel.m, err, false)
		return
	}
	if err := protocol.VerifyChunk(p, tp.Index, payload); err != nil {
		t.stats.ChunksBad.Add(1)
		dl.bad[tp.Index]++
		if n := dl.bad[tp.Index]; n >= mqttChunkTries {
			t.transient(ap, dl.rel.m, fmt.Errorf("chunk %d from the broker does not match the signed hash %d times: the broker's copy is corrupt; republish the release", tp.Index, n), true)
			return
		}
		// Ask again at once: unsubscribing and subscribing again makes
		// the broker send the retained copy again.
		t.logf("mqtt: %s %s: chunk %d from the broker does not match the signed hash (%v); asking for it again", dl.rel.m.App, dl.rel.m.Version, tp.Index, err)
		t.client.Unsubscribe(topic)
		t.subscribe(map[string]byte{topic: 0})
		return
	}
	if err := t.writeChunk(ap, tp.Index, payload); err != nil {
		t.transient(ap, dl.rel.m, fmt.Errorf("cannot store chunk %d: %w", tp.Index, err), false)
		return
	}
	delete(dl.outstanding, tp.Index)
	delete(dl.bad, tp.Index)
	t.client.Unsubscribe(topic)
	dl.lastChunk = time.Now()
	dl.stalls = 0
	if ap.stallErr {
		ap.lastErr, ap.stallErr = "", false // chunks flow again
	}
	t.stats.ChunksReceived.Add(1)
	t.stats.ChunkBytes.Add(int64(len(payload)))
	if dl.n == len(dl.have) {
		dl.complete = true
	}
	t.fill(ctx, ap)
}

// writeChunk writes a verified chunk at its offset, fsyncs, then records it.
func (t *mqttTransport) writeChunk(ap *mqttApp, i int, data []byte) error {
	dl := ap.dl
	if _, err := dl.f.WriteAt(data, int64(i)*dl.rel.m.Payload.ChunkSize); err != nil {
		return err
	}
	if err := dl.f.Sync(); err != nil {
		return err
	}
	dl.have[i] = true
	dl.n++
	a := t.agent()
	if a == nil {
		return errors.New("state database unavailable")
	}
	rec := &dlRecord{Schema: 1, SHA256: dl.rel.m.Payload.SHA256, Version: dl.rel.m.Version, Sequence: dl.rel.m.Sequence, Have: make([]byte, (len(dl.have)+7)/8)}
	for j, h := range dl.have {
		if h {
			rec.Have[j/8] |= 1 << (j % 8)
		}
	}
	if err := a.saveDownload(ap.cfg.Name, rec); err != nil {
		return err
	}
	failpoint("mqtt-after-chunk")
	return nil
}

// install hands the complete download to the daemon in the background.
func (t *mqttTransport) install(ctx context.Context, ap *mqttApp) {
	if ap.installing {
		return
	}
	ap.installing = true
	rel, path, name := ap.dl.rel, ap.dl.path, ap.cfg.Name
	go func() {
		err := t.d.installParts(ctx, rel.env.Manifest, []byte(rel.env.Signature), path)
		select {
		case t.events <- mqttEvent{kind: "installed", app: name, err: err}:
		case <-ctx.Done():
		}
	}()
}

func (t *mqttTransport) installed(ctx context.Context, app string, err error) {
	ap := t.apps[app]
	ap.installing = false
	if ap.dl == nil {
		return
	}
	m := ap.dl.rel.m
	switch {
	case err == nil:
		t.logf("mqtt: %s %s installed, on trial", m.App, m.Version)
		ap.lastErr = ""
		ap.hold = nil
		t.abandon(ap) // done with the file and the record
	case errors.Is(err, context.Canceled):
		return // shutting down
	case errors.Is(err, ErrBusy) || errors.Is(err, ErrLocked):
		// The app is on trial or another install runs: try again soon.
		t.busy(ap, m)
		return
	case errors.Is(err, protocol.ErrPayloadMismatch) || errors.Is(err, protocol.ErrTruncated):
		// Every chunk verified, so the whole can only fail if the local
		// file changed under us, or if the signed manifest contradicts
		// itself; fetch everything once more, then give up.
		h := ap.holdFor(m.Payload.SHA256)
		if h.refetches++; h.refetches > 1 {
			t.fatal(ap, ap.dl.rel, fmt.Errorf("the downloaded payload does not verify although each of its chunks did, twice: the release's manifest is inconsistent or this device's storage corrupts data (%w)", err))
			break
		}
		t.logf("mqtt: %s %s: the downloaded payload does not verify (%v); fetching it again", m.App, m.Version, err)
		t.abandon(ap)
		t.evaluate(ctx, ap)
	case Fatal(err):
		t.fatal(ap, ap.dl.rel, err) // the pipeline recorded the refusal in the app's history
	default:
		t.transient(ap, m, err, false) // storage full, I/O, state database…
	}
	t.publishStatus()
}

func (t *mqttTransport) housekeeping(ctx context.Context) {
	// A connected or lost event dropped with a full buffer must not leave
	// the loop believing the wrong thing (no subscriptions, or a status
	// never republished after a reconnect while the broker shows the
	// device offline): paho's view of the connection is the truth.
	if open := t.client.IsConnectionOpen(); open != t.connected {
		if open {
			t.handle(ctx, mqttEvent{kind: "connected"})
		} else {
			t.handle(ctx, mqttEvent{kind: "lost", err: errors.New("the connection closed")})
		}
	}
	// paho's IsConnected is true while it reconnects; t.connected follows
	// IsConnectionOpen, so nothing is subscribed (and nothing logged) into
	// a connection that is not there.
	if t.connected {
		dropped, failed := t.resync.Swap(false), t.subFailed.Swap(false)
		if dropped && !t.dropLogged {
			t.dropLogged = true // once per connection
			t.logf("mqtt: messages were dropped (the agent was busy); subscribing again")
		}
		if dropped || failed {
			t.subscribeAll()
		}
	}
	if t.connected && t.syncNonce == "" && !t.refreshAt.IsZero() && time.Now().After(t.refreshAt) {
		// Read the release topics again: a broker node may have served a
		// stale or empty retained set when the device (re)connected.
		t.refreshN++
		t.refreshAt = time.Now().Add(refreshDelay(t.refreshN))
		t.subscribeAll()
	}
	if t.syncNonce != "" && time.Since(t.syncStart) > mqttSyncTimeout {
		if !t.syncWarned {
			t.syncWarned = true
			t.logf("mqtt: the broker did not echo this device's sync marker on %s within %s; deciding on the releases received so far. Let device %s publish and subscribe %s (protocol/SPEC.md §8.6); until then a release retired while the device was away is noticed only when the agent restarts", t.syncTopic, mqttSyncTimeout, t.cfg.DeviceID, t.syncTopic)
		}
		t.syncDone(ctx, false)
	}
	if t.missed && t.agent() != nil && t.connected {
		// The state database is back (reset): the releases that arrived
		// while it was not are sent again by the broker on a new SUBSCRIBE.
		t.missed = false
		t.logf("mqtt: the state database is usable again; asking for the releases again")
		t.subscribeAll()
	}
	for _, ap := range t.apps {
		if ap.installing {
			continue
		}
		if dl := ap.dl; dl != nil && len(dl.outstanding) > 0 && t.connected && time.Since(dl.lastChunk) > stallDelay(dl.stalls) {
			t.stalled(ap)
			continue
		}
		if t.syncNonce != "" {
			continue // decide on the complete view (syncDone evaluates)
		}
		// Starts what is due: a release after a trial ended, a retry after
		// a hold, the install of a complete download.
		t.evaluate(ctx, ap)
	}
	t.resend() // transport_conn.go
	t.publishStatus()
}

// stallDelay is how long a download waits for a chunk after n stall
// checks in a row found none: mqttStall doubling up to mqttStallMax.
func stallDelay(n int) time.Duration {
	d := mqttStall
	for i := 0; i < n && d < mqttStallMax; i++ {
		d *= 2
	}
	return min(d, mqttStallMax)
}

// stalled: chunks are outstanding and none came for stallDelay. The device
// says which chunks it lacks and what the operator can do, in its status,
// and asks again with backoff.
func (t *mqttTransport) stalled(ap *mqttApp) {
	dl := ap.dl
	m := dl.rel.m
	waited := time.Since(dl.lastChunk).Round(time.Second)
	dl.stalls++
	idx := make([]int, 0, len(dl.outstanding))
	for i := range dl.outstanding {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	list := make([]string, len(idx))
	for i, n := range idx {
		list[i] = fmt.Sprint(n)
	}
	first, _ := protocol.ChunkTopic(m.App, m.Payload.SHA256, idx[0])
	msg := fmt.Sprintf("%s %s: no chunk has arrived for %s; the broker does not send chunk %s of %d (%d of %d here; e.g. %s); publish the release again (edgefleet publish) or check that the broker keeps retained messages; asking again in %s",
		m.App, m.Version, waited, strings.Join(list, ", "), len(dl.have), dl.n, len(dl.have), first, stallDelay(dl.stalls))
	t.logf("mqtt: %s", msg)
	if ap.lastErr == "" || ap.stallErr {
		ap.lastErr, ap.stallErr = msg, true
	}
	t.resubscribeChunks(dl)
}

// doneBytes counts the payload bytes of the chunks already downloaded.
func (dl *mqttDownload) doneBytes() int64 {
	done := int64(0)
	for i, h := range dl.have {
		if h {
			done += dl.rel.m.Payload.ChunkLen(i)
		}
	}
	return done
}

// checkChunkSpace checks, before a chunk is written, that the write
// leaves the state files their reserve (another program may have filled
// data_dir since the download started).
func (t *mqttTransport) checkChunkSpace(ap *mqttApp, n int) error {
	a := t.agent()
	if a == nil {
		return errors.New("state database unavailable")
	}
	return t.checkSpace(a, ap.dl.rel.m, int64(n))
}

// checkSpace refuses a download (or one chunk of it) that would leave less
// than mqttStateReserve free in data_dir: the state database and floor
// file must always be writable (an install, a sideload or a rollback
// records itself there).
func (t *mqttTransport) checkSpace(a *Agent, m *protocol.Manifest, need int64) error {
	st, err := a.opts.Storage(t.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("read free storage on data_dir %s: %w", t.cfg.DataDir, err)
	}
	if st.Free-need >= mqttStateReserve {
		return nil
	}
	return fmt.Errorf("not enough space in data_dir %s to download %s %s: %s still to fetch, %s kept free for the agent's state, %s free; free some space there (the download goes on by itself): %w",
		t.cfg.DataDir, m.App, m.Version, hardware.Size(need), hardware.Size(mqttStateReserve), hardware.Size(st.Free), ErrNoSpace)
}

// presenceBytes builds the device's presence message (online, or offline
// for the will and a clean stop).
func (t *mqttTransport) presenceBytes(online bool) []byte {
	p := &protocol.Presence{Schema: protocol.MQTTSchemaVersion, Device: t.cfg.DeviceID, Online: online, Time: time.Now().UTC()}
	b, err := p.Marshal()
	if err != nil {
		t.logf("mqtt: presence: %v", err)
	}
	return b
}

// statusBytes builds the device status message. Online is always true:
// a device writes its status only while connected; liveness is the
// presence topic.
func (t *mqttTransport) statusBytes() []byte {
	s := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: t.cfg.DeviceID, Profile: t.cfg.Profile,
		AgentVersion: clip(t.d.opts.Version, 200), Time: time.Now().UTC(), Online: true,
		Channel: t.cfg.Broker.Channel, Labels: t.cfg.Labels, Broker: t.statusBroker()}
	a := t.agent()
	if a != nil {
		s.CPU = clip(a.CPU().String(), 200)
	}
	var sts []AppStatus
	if a != nil {
		sts, _ = a.Status()
	}
	for _, st := range sts {
		ap := t.apps[st.App]
		if ap == nil {
			continue
		}
		if s.Profile == "" && ap.profile != "" {
			s.Profile = ap.profile
		}
		r := protocol.AppReport{App: st.App, Version: st.Version, Sequence: st.Sequence, State: st.State, LastError: st.LastError}
		if ap.lastErr != "" {
			r.LastError = ap.lastErr
		}
		// Why the device stays behind the channel's newest release:
		// information, never a failure.
		r.Note = ap.behind
		if ap.dl != nil {
			r.Target = ap.dl.rel.m.Version
			r.Progress = &protocol.ProgressReport{Step: "download", Done: ap.dl.doneBytes(), Total: ap.dl.rel.m.Payload.Size}
			if ap.installing && st.Progress != nil {
				r.Progress = &protocol.ProgressReport{Step: st.Progress.Step, Done: st.Progress.Done, Total: st.Progress.Total}
			}
			if !ap.installing && ap.dl.complete && !ap.waitOpens.IsZero() {
				opens := ap.waitOpens.UTC()
				r.WindowOpens = &opens
			}
		}
		r.Rollout = t.rolloutReport(a, ap, st)
		if !protocol.ValidApp(r.App) {
			continue
		}
		r.Version = clip(r.Version, 200)
		s.Apps = append(s.Apps, r)
	}
	b, err := s.Marshal()
	if err != nil {
		t.logf("mqtt: status: %v", err)
		s.Apps = nil
		b, _ = s.Marshal()
	}
	return b
}

// publishStatus publishes the retained status when it changed (progress is
// thereby throttled to the housekeeping tick), and at least every
// mqttHeartbeat, so that its time tells the last contact.
func (t *mqttTransport) publishStatus() {
	if !t.connected {
		return
	}
	b := t.statusBytes()
	var cmp protocol.DeviceStatus
	json.Unmarshal(b, &cmp)
	cmp.Time = time.Time{}
	key, _ := json.Marshal(cmp)
	if string(key) == t.lastStatus && time.Since(t.lastPublished) < mqttHeartbeat {
		return
	}
	t.lastStatus, t.lastPublished = string(key), time.Now()
	t.confirm("status", t.client.Publish(t.statusTopic, 1, true, b))
}

// installParts installs a downloaded release through the daemon's
// Sideload (install, restart the app, start its trial; for the agent
// itself, re-exec): the parts are framed as a bundle stream on the fly, so
// the MQTT path and the USB stick path are one pipeline.
func (d *Daemon) installParts(ctx context.Context, rawManifest, rawSig []byte, payloadPath string) error {
	f, err := os.Open(payloadPath)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(protocol.WriteBundle(pw, rawManifest, rawSig, f, fi.Size(), time.Unix(0, 0)))
	}()
	res, _, err := d.Sideload(ctx, pr, nil)
	pr.CloseWithError(errors.New("install ended"))
	if err != nil {
		return err
	}
	if after := d.selfAfter(res.App); after != nil {
		after()
	}
	return nil
}

// mqttFloor is the sequence a release must exceed to be worth fetching:
// the installed one, or the highest ever swapped in (anti-rollback), as
// the state database and the floor file (which outlives a reset) say.
func (a *Agent) mqttFloor(app string) (uint64, error) {
	r, err := a.load(app)
	if err != nil {
		return 0, err
	}
	ff, err := a.fileFloor(app)
	if err != nil {
		return 0, err
	}
	return max(r.Floor, r.Sequence, ff.Sequence), nil
}

func (a *Agent) loadDownload(app string) (*dlRecord, error) {
	var rec *dlRecord
	err := a.withDB(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketDownloads)
			if b == nil {
				return nil
			}
			v := b.Get([]byte(app))
			if v == nil {
				return nil
			}
			var r dlRecord
			if err := protocol.StrictUnmarshalExtensible(v, &r); err != nil || r.Schema != 1 {
				return nil // an unreadable record only costs a fresh download
			}
			rec = &r
			return nil
		})
	})
	return rec, err
}

// saveDownload records (nil: forgets) app's download progress.
func (a *Agent) saveDownload(app string, rec *dlRecord) error {
	return a.withDB(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketDownloads)
			if err != nil {
				return err
			}
			if rec == nil {
				return b.Delete([]byte(app))
			}
			v, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			return b.Put([]byte(app), v)
		})
	})
}

// mqttTLS builds the TLS configuration from broker.ca/cert/key; nil
// without any.
func mqttTLS(bc *BrokerConfig) (*tls.Config, error) {
	if bc.CA == "" && bc.Cert == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if bc.CA != "" {
		pem, err := os.ReadFile(bc.CA)
		if err != nil {
			return nil, fmt.Errorf("broker.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker.ca %s holds no PEM certificate", bc.CA)
		}
		conf.RootCAs = pool
	}
	if bc.Cert != "" {
		c, err := tls.LoadX509KeyPair(bc.Cert, bc.Key)
		if err != nil {
			return nil, fmt.Errorf("broker.cert/key: %w", err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return conf, nil
}
