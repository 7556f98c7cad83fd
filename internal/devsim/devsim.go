// Package devsim simulates edgefleet devices: many MQTT clients in one
// process that find their release and fetch and verify its chunks exactly
// as the agent does over MQTT (release topic + sync marker, then a bounded
// window of retained chunk subscriptions, each chunk checked against the
// signed manifest), install nothing, and publish a status when done. It
// measures what a broker serves, not what a device does.
package devsim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/protocol"
)

// Options configures a run.
type Options struct {
	// Broker is the MQTT URL (tcp://host:port). Required.
	Broker string
	// Username and Password log every device in (optional; with a users
	// file each device id must be a user).
	Username, Password string
	// Keyring verifies release envelopes. Required.
	Keyring *protocol.Keyring
	// Channel and App name the release the devices follow. Required.
	Channel, App string
	// Profile picks one profile's release when the channel holds several.
	// Default: the only one.
	Profile string
	// Devices is how many devices to run. Default 100.
	Devices int
	// IDPrefix starts every device id (client id): prefix + index.
	// Default "sim-".
	IDPrefix string
	// Window bounds the chunk subscriptions outstanding per device, as the
	// agent's. Default 8.
	Window int
	// Connecting bounds the connections being set up at once. Default 200.
	Connecting int
	// Stall is how long a device waits for any chunk before it asks for
	// the outstanding ones again. Default 20s.
	Stall time.Duration
	// Timeout ends the run. Default 10m.
	Timeout time.Duration
	// Keep keeps the devices connected until ctx ends; default: each
	// disconnects once its status is acknowledged.
	Keep bool
}

func (o *Options) validate() error {
	if o.Broker == "" || o.Keyring == nil || o.Channel == "" || o.App == "" {
		return errors.New("devsim: broker URL, public key, channel and app are required")
	}
	if _, err := protocol.ReleaseFilter(o.Channel, o.App); err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	if o.Devices <= 0 {
		o.Devices = 100
	}
	if o.IDPrefix == "" {
		o.IDPrefix = "sim-"
	}
	if err := protocol.CheckDeviceID(fmt.Sprintf("%s%d", o.IDPrefix, o.Devices)); err != nil {
		return fmt.Errorf("devsim: id prefix: %w", err)
	}
	if o.Window <= 0 {
		o.Window = 8
	}
	if o.Connecting <= 0 {
		o.Connecting = 200
	}
	if o.Stall <= 0 {
		o.Stall = 20 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	return nil
}

// Result is one device's outcome.
type Result struct {
	Device string
	// Took is from the device's connect attempt to its status being
	// acknowledged; Done is when that happened, since the run started.
	Took, Done time.Duration
	Chunks     int
	Bytes      int64
	BadChunks  int
	Err        error
}

// Report summarises a run.
type Report struct {
	Devices, Done, Failed int
	Elapsed               time.Duration // until the last device finished
	PerMinute             float64       // devices done per minute of Elapsed
	P50, P99, Max         time.Duration // of Result.Took over the devices done
	BadChunks             int
	Errors                map[string]int // failure reasons → devices
	Results               []Result
}

// Run runs opts.Devices devices until every one is done or failed, or
// opts.Timeout passes, or ctx ends.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	start := time.Now()
	results := make([]Result, opts.Devices)
	connecting := make(chan struct{}, opts.Connecting)
	var wg sync.WaitGroup
	for i := range opts.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &device{o: &opts, id: fmt.Sprintf("%s%d", opts.IDPrefix, i), start: start}
			results[i] = d.run(ctx, connecting)
			if results[i].Err == nil {
				progress.Add(1)
			}
		}()
	}
	wg.Wait()
	return summarise(results), nil
}

func summarise(results []Result) *Report {
	r := &Report{Devices: len(results), Errors: map[string]int{}, Results: results}
	var took []time.Duration
	for _, x := range results {
		r.BadChunks += x.BadChunks
		if x.Err != nil {
			r.Failed++
			r.Errors[x.Err.Error()]++
			continue
		}
		r.Done++
		took = append(took, x.Took)
		r.Elapsed = max(r.Elapsed, x.Done)
	}
	if len(took) > 0 {
		slices.Sort(took)
		r.P50 = took[len(took)/2]
		r.P99 = took[min(len(took)-1, len(took)*99/100)]
		r.Max = took[len(took)-1]
		r.PerMinute = float64(r.Done) / r.Elapsed.Minutes()
	}
	return r
}

type device struct {
	o     *Options
	id    string
	start time.Time
	c     paho.Client
	// msgs carries paho's deliveries to the device's loop.
	msgs chan paho.Message
}

func (d *device) run(ctx context.Context, connecting chan struct{}) (res Result) {
	res.Device = d.id
	t0 := time.Now()
	defer func() {
		res.Took = time.Since(t0)
		res.Done = time.Since(d.start)
	}()
	d.msgs = make(chan paho.Message, d.o.Window+16)
	po := paho.NewClientOptions().
		AddBroker(d.o.Broker).
		SetClientID(d.id).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetOrderMatters(true).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(30 * time.Second).
		SetWriteTimeout(30 * time.Second).
		SetProtocolVersion(4).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.post(ctx, m) })
	if d.o.Username != "" {
		po.SetUsername(d.o.Username).SetPassword(d.o.Password)
	}
	d.c = paho.NewClient(po)
	select {
	case connecting <- struct{}{}:
	case <-ctx.Done():
		res.Err = errors.New("run timed out before the device connected")
		return res
	}
	err := wait(ctx, d.c.Connect())
	<-connecting
	if err != nil {
		res.Err = fmt.Errorf("connect: %w", err)
		return res
	}
	defer func() {
		if d.o.Keep && res.Err == nil {
			<-ctx.Done()
		}
		d.c.Disconnect(100)
	}()
	m, err := d.release(ctx)
	if err != nil {
		res.Err = err
		return res
	}
	if err := d.download(ctx, m, &res); err != nil {
		res.Err = err
		return res
	}
	res.Err = d.status(ctx, m)
	return res
}

func (d *device) post(ctx context.Context, m paho.Message) {
	select {
	case d.msgs <- m:
	case <-ctx.Done():
	}
}

func wait(ctx context.Context, t paho.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return errors.New("run timed out")
	}
}

// release subscribes to the channel's releases and the device's sync
// marker, publishes the marker, and decides once it comes back (every
// retained release has then arrived, SPEC.md §8.1).
func (d *device) release(ctx context.Context) (*protocol.Manifest, error) {
	filter, _ := protocol.ReleaseFilter(d.o.Channel, d.o.App)
	syncTopic, _ := protocol.SyncTopic(d.id)
	if err := wait(ctx, d.c.SubscribeMultiple(map[string]byte{filter: 0, syncTopic: 0}, nil)); err != nil {
		return nil, fmt.Errorf("subscribe to the release: %w", err)
	}
	var nonce [8]byte
	for i := range nonce {
		nonce[i] = byte(rand.Uint32())
	}
	marker := hex.EncodeToString(nonce[:])
	d.c.Publish(syncTopic, 0, false, []byte(marker))
	envs := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			return nil, errors.New("run timed out waiting for the release and sync marker")
		case msg := <-d.msgs:
			if msg.Topic() == syncTopic {
				if string(msg.Payload()) == marker {
					return d.pick(envs)
				}
				continue
			}
			if tp, err := protocol.ParseTopic(msg.Topic()); err == nil && tp.Kind == protocol.KindRelease {
				envs[tp.Profile] = slices.Clone(msg.Payload())
			}
		}
	}
}

func (d *device) pick(envs map[string][]byte) (*protocol.Manifest, error) {
	var raw []byte
	switch {
	case d.o.Profile != "":
		raw = envs[d.o.Profile]
	case len(envs) == 1:
		for _, v := range envs {
			raw = v
		}
	case len(envs) > 1:
		return nil, fmt.Errorf("channel %s holds releases of %s for %d profiles: choose one (--profile)", d.o.Channel, d.o.App, len(envs))
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("no release of %s on channel %s", d.o.App, d.o.Channel)
	}
	env, err := protocol.ParseEnvelope(raw)
	if err != nil {
		return nil, err
	}
	return env.Open(d.o.Keyring)
}

// download keeps up to Window chunk subscriptions outstanding, verifies
// every chunk against the signed hashes and unsubscribes from it.
func (d *device) download(ctx context.Context, m *protocol.Manifest, res *Result) error {
	p := &m.Payload
	n := len(p.Chunks)
	have := make([]bool, n)
	outstanding := map[int]string{}
	next, got := 0, 0
	fill := func() {
		subs := map[string]byte{}
		for next < n && len(outstanding) < d.o.Window {
			tp, _ := protocol.ChunkTopic(m.App, p.SHA256, next)
			outstanding[next] = tp
			subs[tp] = 0
			next++
		}
		if len(subs) > 0 {
			d.c.SubscribeMultiple(subs, nil)
		}
	}
	fill()
	stall := time.NewTimer(d.o.Stall)
	defer stall.Stop()
	for got < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("run timed out with %d of %d chunks", got, n)
		case <-stall.C:
			// Ask again: unsubscribing and subscribing makes the broker
			// send the retained copies again.
			var topics []string
			subs := map[string]byte{}
			for _, tp := range outstanding {
				topics = append(topics, tp)
				subs[tp] = 0
			}
			d.c.Unsubscribe(topics...)
			d.c.SubscribeMultiple(subs, nil)
			stall.Reset(d.o.Stall)
		case msg := <-d.msgs:
			tp, err := protocol.ParseTopic(msg.Topic())
			if err != nil || tp.Kind != protocol.KindChunk || tp.SHA256 != p.SHA256 || tp.Index >= n || have[tp.Index] {
				continue
			}
			topic, ok := outstanding[tp.Index]
			if !ok {
				continue
			}
			if err := protocol.VerifyChunk(p, tp.Index, msg.Payload()); err != nil {
				res.BadChunks++
				if res.BadChunks >= 3 {
					return fmt.Errorf("chunk %d: %w", tp.Index, err)
				}
				d.c.Unsubscribe(topic)
				d.c.SubscribeMultiple(map[string]byte{topic: 0}, nil)
				continue
			}
			have[tp.Index] = true
			delete(outstanding, tp.Index)
			got++
			res.Chunks++
			res.Bytes += int64(len(msg.Payload()))
			d.c.Unsubscribe(topic)
			stall.Reset(d.o.Stall)
			fill()
		}
	}
	return nil
}

// status publishes the device's retained status: the release, verified
// and not installed, QoS 1, and waits for the broker's acknowledgement.
func (d *device) status(ctx context.Context, m *protocol.Manifest) error {
	topic, _ := protocol.StatusTopic(d.id)
	st := protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: d.id, Channel: d.o.Channel, Time: time.Now().UTC(), Online: true,
		AgentVersion: "devsim", Apps: []protocol.AppReport{{App: m.App, Version: m.Version, Sequence: m.Sequence, State: "running",
			Note: "simulated device: every chunk verified, nothing installed"}}}
	b, err := json.Marshal(&st)
	if err != nil {
		return err
	}
	if err := wait(ctx, d.c.Publish(topic, 1, true, b)); err != nil {
		return fmt.Errorf("publish status: %w", err)
	}
	return nil
}

// progress counts the devices done, for live reporting.
var progress atomic.Int64

// DoneSoFar is how many devices have finished (any run in this process).
func DoneSoFar() int64 { return progress.Load() }
