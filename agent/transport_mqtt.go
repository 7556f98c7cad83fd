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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
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

// MQTTStats counts what the transport did since it started (tests and
// benchmarks).
type MQTTStats struct {
	ChunksReceived atomic.Int64 // chunk messages that verified and were written
	ChunksBad      atomic.Int64 // chunk messages that failed their hash
	ChunkBytes     atomic.Int64
	Resumed        atomic.Int64 // chunks found already downloaded at start
	Dropped        atomic.Int64 // malformed or unexpected messages
	MirrorChunks   atomic.Int64 // chunks fetched from HTTP(S) mirrors (also in ChunksReceived)
	MirrorFailures atomic.Int64 // mirrors given up on during a download
	DeltasUsed     atomic.Int64 // releases installed from a delta
	DeltaFallbacks atomic.Int64 // deltas given up for the full release
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
	// mirrorNote says why the last download left a mirror (status note).
	mirrorNote string
	// Deltas (transport_delta.go): the installed executable's sha256 the
	// delta filter was subscribed with, the filter, the verified deltas
	// from it by result executable sha256 (and their sync-round
	// counterpart), the releases whose delta was given up (full payload
	// sha256 → why), the status's apps[].delta, and the hash of an
	// executable not installed by edgefleet.
	base          string
	deltaFilter   string
	deltas        map[string]*mqttRelease
	pendingDeltas map[string]*mqttRelease
	deltaGiveUp   map[string]string
	deltaNote     string
	baseFile      *baseCache
}

type mqttEvent struct {
	kind    string // "connected", "connfail", "lost", "msg", "installed", "mirror", "published"
	topic   string // "mirror": the payload sha256; "published": the topic
	payload []byte
	app     string
	err     error
	// "mirror" (transport_mirror.go): the chunk, the mirror's base URL and
	// the download's generation.
	index  int
	source string
	gen    int
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
	// mirrors: one client per mirror base URL (connection reuse).
	mirrors map[string]*httpMirror
	// mirrorRoots verifies https mirrors: the system roots plus
	// cfg.MirrorCA; nil (the system roots) without one.
	mirrorRoots *x509.CertPool
	conn        mqttConn   // transport_conn.go
	keyset      keySetFeed // transport_keyset.go

	lastStatus    string
	lastPublished time.Time
	connected     bool
	connErr       string // last connection failure logged
	connErrAt     time.Time
	statusTopic   string
	presenceTopic string
	syncTopic     string
	// Remote logs (logs.go): requests arrive on logsRequestTopic, replies
	// go to logsTopic, at most logsRate a second.
	logsRequestTopic, logsTopic string
	logsLimit                   logsLimiter
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
	t.logsRequestTopic, _ = protocol.LogsRequestTopic(d.cfg.DeviceID)
	t.logsTopic, _ = protocol.LogsTopic(d.cfg.DeviceID)
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
		pass, err := bc.password() // secrets.go
		if err != nil {
			return nil, err
		}
		o.SetUsername(bc.Username).SetPassword(pass)
	}
	if tlsConf != nil {
		o.SetTLSConfig(tlsConf)
	}
	t.client = paho.NewClient(o)
	t.watchKeySet() // transport_keyset.go
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
	case "mirror":
		t.mirrorResult(ctx, ev)
	case "published":
		t.published(ev.topic, ev.err) // transport_conn.go
	}
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
	if topic == protocol.KeySetTopic {
		t.keySetMessage(payload) // transport_keyset.go
		return
	}
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
	case protocol.KindDelta:
		t.deltaMessage(ctx, tp, topic, payload)
	case protocol.KindLogsRequest:
		if tp.Device == t.cfg.DeviceID {
			t.logsRequest(ctx, payload)
		}
	case protocol.KindSync:
		if tp.Device == t.cfg.DeviceID && t.syncNonce != "" && string(payload) == t.syncNonce {
			t.syncDone(ctx, true)
		}
	default:
		t.stats.Dropped.Add(1)
	}
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
		if dropped || failed || t.keyset.changed.Swap(false) { // transport_keyset.go
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
