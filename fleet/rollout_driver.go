package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// The rollout driver watches device statuses and moves every rollout's
// cut (SPEC.md §8.8). Its whole state is the retained control messages:
// killed and restarted, it reads them back with the statuses and goes on
// where it was; while it is gone nothing advances, because nothing else
// moves a cut. Its retained presence on protocol.DriverTopic (last will:
// offline) keeps two instances from driving at once.

// DriverOptions configures RunDriver.
type DriverOptions struct {
	// Client is how the driver connects; it logs in as an operator.
	// WillTopic and OnConnectionLost are set by the driver.
	Client ClientOptions
	// TakeOver starts the driver even though another instance's presence
	// says it is online (that instance stops driving when it sees this
	// one's presence).
	TakeOver bool
	// StaleBefore treats an online presence written before it as gone:
	// the embedded broker passes its start time, since every driver
	// connected to it writes its presence again after connecting.
	StaleBefore time.Time
	// Tick is how often timeouts and bakes are checked and throttled
	// counts published. Default 250ms.
	Tick time.Duration
	// Throttle is the least time between two publishes of a rollout whose
	// counts alone changed (a state change is published at once). Default
	// 1s.
	Throttle time.Duration
	// Retry is the wait before reconnecting after the connection dropped.
	// Default 2s.
	Retry time.Duration
	// Instance is this driver's id. Default: random.
	Instance string
	// Host and PID describe the driver in its presence. Default: this
	// process's.
	Host string
	PID  int
	// Logf receives one line per notable event. Default: discard.
	Logf func(format string, args ...any)
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// OnReady, when set, is called once the driver has claimed its
	// presence and read the retained state (tests wait on it).
	OnReady func()
}

// Validate checks the options and fills defaults.
func (o *DriverOptions) Validate() error {
	if o.Tick <= 0 {
		o.Tick = 250 * time.Millisecond
	}
	if o.Throttle <= 0 {
		o.Throttle = time.Second
	}
	if o.Retry <= 0 {
		o.Retry = 2 * time.Second
	}
	if o.Instance == "" {
		var b [8]byte
		rand.Read(b[:])
		o.Instance = hex.EncodeToString(b[:])
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Client.ClientID == "" {
		o.Client.ClientID = "edgefleet-driver-" + o.Instance
	}
	return o.Client.Validate()
}

// Errors of RunDriver that retrying does not cure.
var (
	// ErrDriverOnline: another instance is online; the driver did not start.
	ErrDriverOnline = errors.New("another rollout driver is online")
	// ErrDriverReplaced: another instance took over; this one stopped.
	ErrDriverReplaced = errors.New("another rollout driver took over")
)

// RunDriver drives every rollout on the broker until ctx is done (then
// it says it is offline and returns ctx.Err()), another instance is
// online (ErrDriverOnline) or takes over (ErrDriverReplaced). A dropped
// connection is retried every Retry.
func RunDriver(ctx context.Context, o DriverOptions) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("rollout driver: %w", err)
	}
	since := o.Now().UTC()
	for {
		err := driveOnce(ctx, &o, since)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrDriverOnline) || errors.Is(err, ErrDriverReplaced) {
			return err
		}
		o.Logf("rollout driver: %v; connecting again in %s", err, o.Retry)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.Retry):
		}
	}
}

// driverQueue hands messages from paho's delivery goroutine to the
// driver's. It never blocks the sender (a blocked handler would stall the
// acknowledgements the driver waits for).
type driverQueue struct {
	mu     sync.Mutex
	items  []driverMsg
	signal chan struct{}
}

type driverMsg struct {
	topic   string
	payload []byte
	synced  bool // the retained messages have all been queued
}

func (q *driverQueue) put(m driverMsg) {
	q.mu.Lock()
	q.items = append(q.items, m)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *driverQueue) take() []driverMsg {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}

// driver is one connection's worth of driving.
type driver struct {
	o          *DriverOptions
	c          paho.Client
	ctx        context.Context
	since      time.Time
	synced     bool
	engines    map[string]*driven // by control topic
	statuses   map[string][]byte  // device → latest raw status (seeds new engines)
	online     map[string]bool    // device → presence
	candidates map[string][]byte  // candidate topic → envelope
	// released is the sequence of each channel release topic's envelope
	// (0 when cleared): promotion never replaces a newer release.
	released map[string]releaseHeld
	replaced error
}

// releaseHeld is what a channel release topic holds.
type releaseHeld struct {
	version string
	seq     uint64
}

type driven struct {
	e                   *RolloutEngine
	topic               string
	pubState, pubCounts uint64
	lastPub             time.Time
	broken              bool // a publish failed to marshal: logged once
}

func (o *DriverOptions) presence(online bool, since, now time.Time) []byte {
	b, _ := (&protocol.DriverPresence{Schema: protocol.MQTTSchemaVersion, Instance: o.Instance, Host: o.Host, PID: o.PID,
		Online: online, Since: since, Time: now.UTC()}).Marshal()
	return b
}

func driveOnce(ctx context.Context, o *DriverOptions, since time.Time) error {
	lost := make(chan error, 1)
	co := o.Client
	co.WillTopic, co.WillPayload = protocol.DriverTopic, o.presence(false, since, o.Now())
	co.OnConnectionLost = func(err error) {
		select {
		case lost <- err:
		default:
		}
	}
	c, err := Connect(ctx, co)
	if err != nil {
		return err
	}
	d := &driver{o: o, c: c, ctx: ctx, since: since, engines: map[string]*driven{}, statuses: map[string][]byte{},
		online: map[string]bool{}, candidates: map[string][]byte{}, released: map[string]releaseHeld{}}
	// Who drives now?
	snap, err := Snapshot(ctx, c, []string{protocol.DriverTopic})
	if err != nil {
		c.Disconnect(100)
		return err
	}
	if b := snap[protocol.DriverTopic]; len(b) > 0 {
		p, err := protocol.ParseDriverPresence(b)
		switch {
		case err != nil:
			o.Logf("rollout driver: ignoring a malformed driver presence: %v", err)
		case p.Online && p.Instance != o.Instance && !o.TakeOver && !(!o.StaleBefore.IsZero() && p.Time.Before(o.StaleBefore)):
			c.Disconnect(100)
			return fmt.Errorf("%w: instance %s on %s (pid %d) since %s; two drivers must never drive the same rollouts, so this one does not start. Stop that one, or, if it is gone for good (its host died and the broker has not noticed yet), start this one with --take-over: %w",
				ErrDriverOnline, p.Instance, p.Host, p.PID, p.Since.UTC().Format(time.RFC3339), ErrDriverOnline)
		case p.Online && p.Instance != o.Instance:
			o.Logf("rollout driver: taking over from instance %s on %s (pid %d)", p.Instance, p.Host, p.PID)
		}
	}
	if err := wait(ctx, c.Publish(protocol.DriverTopic, 1, true, o.presence(true, since, o.Now())), 30*time.Second); err != nil {
		c.Disconnect(100)
		return fmt.Errorf("publish the driver presence: %w", err)
	}
	q := &driverQueue{signal: make(chan struct{}, 1)}
	filters := append([]string{protocol.DriverTopic, protocol.AllRolloutsFilter, protocol.AllReleasesFilter}, protocol.DeviceFilters...)
	if err := Subscribe(ctx, c, filters, func(topic string, payload []byte) {
		q.put(driverMsg{topic: topic, payload: payload})
	}); err != nil {
		c.Disconnect(100)
		return err
	}
	q.put(driverMsg{synced: true})
	tick := time.NewTicker(o.Tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// A clean goodbye: the presence says gone, and a DISCONNECT
			// drops the will.
			wait(context.Background(), c.Publish(protocol.DriverTopic, 1, true, o.presence(false, since, o.Now())), 5*time.Second)
			c.Disconnect(250)
			return ctx.Err()
		case err := <-lost:
			return fmt.Errorf("lost the connection to the broker: %w", err)
		case <-q.signal:
			now := o.Now()
			for _, m := range q.take() {
				if m.synced {
					d.synced = true
					o.Logf("rollout driver %s: driving %d rollouts, %d devices known", o.Instance, len(d.engines), len(d.statuses))
					if o.OnReady != nil {
						o.OnReady()
					}
					continue
				}
				d.handle(m.topic, m.payload, now)
			}
		case <-tick.C:
			if d.synced {
				now := o.Now()
				for _, dr := range d.engines {
					dr.e.Tick(now)
				}
			}
		}
		if d.replaced != nil {
			c.Disconnect(100) // no will: the new instance's presence stays
			return d.replaced
		}
		if err := d.flush(o.Now()); err != nil {
			c.Disconnect(0)
			return err
		}
	}
}

// handle applies one message.
func (d *driver) handle(topic string, payload []byte, now time.Time) {
	t, err := protocol.ParseTopic(topic)
	if err != nil {
		return
	}
	switch t.Kind {
	case protocol.KindStatus:
		var s *protocol.DeviceStatus
		if len(payload) > 0 {
			if s, err = protocol.ParseStatus(payload); err != nil || s.Device != t.Device {
				return // malformed: the device's last good status stands
			}
			d.statuses[t.Device] = payload
		} else {
			delete(d.statuses, t.Device)
		}
		online, known := d.online[t.Device]
		if !known && s != nil {
			online = s.Online
		}
		for _, dr := range d.engines {
			dr.e.Update(t.Device, s, online, now)
		}
	case protocol.KindPresence:
		if len(payload) == 0 {
			delete(d.online, t.Device)
			return
		}
		p, err := protocol.ParsePresence(payload)
		if err != nil || p.Device != t.Device {
			return
		}
		d.online[t.Device] = p.Online
		for _, dr := range d.engines {
			dr.e.SetOnline(t.Device, p.Online)
		}
	case protocol.KindRelease:
		delete(d.released, topic)
		if env, err := protocol.ParseEnvelope(payload); err == nil {
			if m, err := protocol.ParseManifest(env.Manifest); err == nil {
				d.released[topic] = releaseHeld{m.Version, m.Sequence}
			}
		}
	case protocol.KindCandidate:
		if len(payload) == 0 {
			delete(d.candidates, topic)
		} else {
			d.candidates[topic] = payload
		}
	case protocol.KindRollout:
		d.handleRollout(topic, payload, now)
	case protocol.KindDriver:
		if len(payload) == 0 {
			d.reclaim()
			return
		}
		p, err := protocol.ParseDriverPresence(payload)
		switch {
		case err != nil:
			d.reclaim()
		case p.Instance != d.o.Instance && p.Online:
			d.replaced = fmt.Errorf("%w: instance %s on %s (pid %d) claimed the driver topic at %s; this one (%s) stops driving",
				ErrDriverReplaced, p.Instance, p.Host, p.PID, p.Time.UTC().Format(time.RFC3339), d.o.Instance)
		case !p.Online:
			// Someone's will (ours from an earlier connection, or a
			// replaced instance's) says gone: say we are here.
			d.reclaim()
		}
	}
}

func (d *driver) reclaim() {
	d.c.Publish(protocol.DriverTopic, 1, true, d.o.presence(true, d.since, d.o.Now()))
}

func (d *driver) handleRollout(topic string, payload []byte, now time.Time) {
	dr := d.engines[topic]
	if len(payload) == 0 {
		delete(d.engines, topic)
		return
	}
	r, err := protocol.ParseRollout(payload)
	if err != nil {
		d.o.Logf("rollout driver: ignoring %s: %v", topic, err)
		return
	}
	if want, _ := protocol.RolloutTopic(r.Channel, r.App); want != topic {
		d.o.Logf("rollout driver: ignoring %s: it names channel %s, app %s", topic, r.Channel, r.App)
		return
	}
	switch {
	case dr == nil || dr.e.ID() != r.ID:
		// A rollout new to this driver (started, or read back after a
		// restart): the message is the whole state.
		e := NewRolloutEngine(r)
		for dev, raw := range d.statuses {
			s, err := protocol.ParseStatus(raw)
			if err != nil {
				continue
			}
			online, known := d.online[dev]
			if !known {
				online = s.Online
			}
			e.Update(dev, s, online, now)
		}
		nd := &driven{e: e, topic: topic}
		if r.Driver == d.o.Instance {
			nd.pubState, nd.pubCounts = e.Generations()
		}
		d.engines[topic] = nd
	case r.Driver == d.o.Instance:
		// Our own message coming back.
	case r.Driver == "":
		if !dr.e.Command(r, now) {
			d.o.Logf("rollout driver: %s: an operator asked for %s, but the rollout is %s; keeping it", r.ID, r.State, dr.e.State())
		}
	case r.Revision > dr.e.Revision():
		// Another driver instance wrote a newer state (a takeover race):
		// take it whole.
		dr.e.Adopt(r, now)
	default:
		// A stale write by another instance: ours is written again.
		dr.e.stateGen++
	}
}

// flush publishes what changed: state changes at once, count changes at
// most once per Throttle; a rollout whose last wave baked is promoted.
func (d *driver) flush(now time.Time) error {
	if !d.synced {
		return nil
	}
	for _, dr := range d.engines {
		if dr.e.ReadyToPromote() {
			if err := d.promote(dr, now); err != nil {
				return err
			}
		}
		st, cn := dr.e.Generations()
		if st == dr.pubState && (cn == dr.pubCounts || now.Sub(dr.lastPub) < d.o.Throttle) {
			continue
		}
		msg := dr.e.Stamp(d.o.Instance, now)
		b, err := msg.Marshal()
		if err != nil {
			if !dr.broken {
				d.o.Logf("rollout driver: %s: cannot write the control message: %v", msg.ID, err)
				dr.broken = true
			}
			continue
		}
		if err := wait(d.ctx, d.c.Publish(dr.topic, 1, true, b), 10*time.Second); err != nil {
			return fmt.Errorf("publish %s: %w", dr.topic, err)
		}
		stateChanged := st != dr.pubState
		dr.pubState, dr.pubCounts = dr.e.Generations()
		dr.lastPub = now
		if stateChanged {
			d.o.Logf("rollout driver: %s %s, wave %d of %d, cut %d: %s", msg.ID, msg.State, msg.Wave+1, len(msg.Waves), msg.Cut, msg.Reason)
		}
	}
	return nil
}

// promote publishes the candidates to the channel's release topics,
// clears the candidate topics and marks the rollout done. Each step is
// acknowledged before the next, so a driver killed in between finds the
// rollout still running with its last wave baked and does the rest: a
// candidate already cleared was already published to the channel.
func (d *driver) promote(dr *driven, now time.Time) error {
	r := dr.e.Rollout()
	published := 0
	for _, p := range r.Profiles {
		ct, err := protocol.CandidateTopic(r.Channel, r.App, p)
		if err != nil {
			return err
		}
		env := d.candidates[ct]
		if len(env) == 0 || len(r.Select) > 0 {
			continue
		}
		rt, err := protocol.ReleaseTopic(r.Channel, r.App, p)
		if err != nil {
			return err
		}
		if held := d.released[rt]; held.seq >= r.Sequence {
			// Someone published a newer release meanwhile: it stays
			// (the signature is the devices' to check; the sequence
			// decides either way, as devices never go back).
			d.o.Logf("rollout driver: %s: not promoting %s %s to %s: the channel already holds %s (sequence %d)", r.ID, r.App, r.Version, rt, held.version, held.seq)
			continue
		}
		if err := wait(d.ctx, d.c.Publish(rt, 1, true, env), time.Minute); err != nil {
			return fmt.Errorf("promote %s: publish %s: %w", r.ID, rt, err)
		}
		published++
	}
	for _, p := range r.Profiles {
		ct, _ := protocol.CandidateTopic(r.Channel, r.App, p)
		if len(d.candidates[ct]) == 0 {
			continue
		}
		if err := wait(d.ctx, d.c.Publish(ct, 1, true, []byte{}), time.Minute); err != nil {
			return fmt.Errorf("promote %s: clear %s: %w", r.ID, ct, err)
		}
		delete(d.candidates, ct)
	}
	reason := fmt.Sprintf("done: every wave passed; %s %s is the release of channel %s", r.App, r.Version, r.Channel)
	if len(r.Select) > 0 {
		reason = fmt.Sprintf("done: every device matching %s runs %s %s; the rest of channel %s keeps its release (publish it to the channel to reach them)",
			r.Select.String(), r.App, r.Version, r.Channel)
	}
	dr.e.MarkDone(reason, now)
	d.o.Logf("rollout driver: %s: promoted %d profiles", r.ID, published)
	return nil
}
