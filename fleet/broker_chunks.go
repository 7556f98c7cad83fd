package fleet

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Retained chunks, delivered without a copy per subscriber.
//
// mochi sends a retained message on subscribe by copying it (payload
// included) into the client's outbound queue (up to
// MaximumClientWritesPending = 8192 packets), then encoding it into a
// second fresh buffer to write it. A device asks for a window of 8 chunks
// of 128 KiB at once, so every downloading device held about 1-2 MiB of
// chunk copies in the broker until its socket drained: 5,000 simulated
// devices took 6.8 GiB where Mosquitto, which shares one reference-counted
// copy, took 218 MiB. Shrinking the queue would drop chunks (mochi drops a
// publish when the queue is full), not slow them down.
//
// chunkDelivery takes the retained delivery of exact chunk topics
// subscribed at QoS 0 (what agents do) away from mochi (RetainHandling 2
// for those filters) and, once the SUBACK is written, sends each chunk from
// the retained store itself: header and the shared payload slice in one
// vectored write, no copy. A client's pending deliveries are topic names
// only, sent one at a time by one goroutine per client with work, so the
// broker's memory per downloading client is a few hundred bytes plus a
// goroutine, whatever the window; the socket's buffers are the kernel's.
// A chunk unsubscribed before its turn is not sent. Releases, statuses and
// everything else keep mochi's path (the sync marker's ordering relies on
// it, SPEC.md §8.1).
type chunkDelivery struct {
	mqtt.HookBase
	srv *mqtt.Server
	// writeTimeout bounds one chunk write; a client that does not read for
	// that long is disconnected.
	writeTimeout time.Duration
	clients      sync.Map // *mqtt.Client → *chunkQueue
	// sent counts chunks delivered by this path (tests).
	sent atomic.Int64
}

type chunkQueue struct {
	mu      sync.Mutex
	subs    map[uint16][]string // SUBSCRIBE packet id → chunk topics taken over
	topics  []string            // waiting to be sent
	running bool
}

var chunkTopicPrefix = protocol.TopicPrefix + "chunks/"

func (h *chunkDelivery) ID() string { return "edgefleet-chunks" }

func (h *chunkDelivery) Provides(b byte) bool {
	return b == mqtt.OnSubscribe || b == mqtt.OnSubscribed || b == mqtt.OnPacketSent || b == mqtt.OnDisconnect
}

func (h *chunkDelivery) queue(cl *mqtt.Client) *chunkQueue {
	if q, ok := h.clients.Load(cl); ok {
		return q.(*chunkQueue)
	}
	q, _ := h.clients.LoadOrStore(cl, &chunkQueue{subs: map[uint16][]string{}})
	return q.(*chunkQueue)
}

// OnSubscribe marks the exact chunk topics of a QoS 0 subscription as ours.
func (h *chunkDelivery) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	var mine []string
	for i, f := range pk.Filters {
		if f.Qos != 0 || f.RetainHandling != 0 || !strings.HasPrefix(f.Filter, chunkTopicPrefix) || strings.ContainsAny(f.Filter, "+#") {
			continue
		}
		pk.Filters[i].RetainHandling = 2 // mochi sends no retained copy
		mine = append(mine, f.Filter)
	}
	if len(mine) > 0 {
		q := h.queue(cl)
		q.mu.Lock()
		q.subs[pk.PacketID] = mine
		q.mu.Unlock()
	}
	return pk
}

// OnSubscribed drops the topics the subscription refused (ACL).
func (h *chunkDelivery) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	v, ok := h.clients.Load(cl)
	if !ok {
		return
	}
	q := v.(*chunkQueue)
	q.mu.Lock()
	defer q.mu.Unlock()
	mine := q.subs[pk.PacketID]
	if len(mine) == 0 {
		return
	}
	var granted []string
	j := 0
	for i, f := range pk.Filters {
		if j < len(mine) && f.Filter == mine[j] {
			j++
			if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
				granted = append(granted, f.Filter)
			}
		}
	}
	q.subs[pk.PacketID] = granted
}

// OnPacketSent starts the deliveries of a subscription once its SUBACK is
// written, as mochi would.
func (h *chunkDelivery) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	v, ok := h.clients.Load(cl)
	if !ok {
		return
	}
	q := v.(*chunkQueue)
	q.mu.Lock()
	mine, ok := q.subs[pk.PacketID]
	delete(q.subs, pk.PacketID)
	if !ok || len(mine) == 0 {
		q.mu.Unlock()
		return
	}
	q.topics = append(q.topics, mine...)
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if start {
		go h.run(cl, q)
	}
}

func (h *chunkDelivery) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.clients.Delete(cl)
}

// run sends q's chunks one at a time until none is left.
func (h *chunkDelivery) run(cl *mqtt.Client, q *chunkQueue) {
	for {
		q.mu.Lock()
		if len(q.topics) == 0 || cl.Closed() {
			q.topics, q.running = nil, false
			q.mu.Unlock()
			return
		}
		topic := q.topics[0]
		q.topics = q.topics[1:]
		q.mu.Unlock()
		if _, ok := cl.State.Subscriptions.Get(topic); !ok {
			continue // unsubscribed before its turn
		}
		pk, ok := h.srv.Topics.Retained.Get(topic)
		if !ok || len(pk.Payload) == 0 {
			continue
		}
		if err := h.write(cl, topic, pk.Payload); err != nil {
			cl.Stop(fmt.Errorf("send retained chunk %s: %w", topic, err))
			return
		}
	}
}

// write sends one retained QoS 0 PUBLISH: header, then the retained
// payload itself.
func (h *chunkDelivery) write(cl *mqtt.Client, topic string, payload []byte) error {
	v5 := cl.Properties.ProtocolVersion == 5
	rem := 2 + len(topic) + len(payload)
	if v5 {
		rem++ // property length 0
	}
	if max := cl.Properties.Props.MaximumPacketSize; max > 0 && uint32(rem+5) > max {
		return nil // as mochi: a packet the client refuses is not sent
	}
	hdr := make([]byte, 0, 5+2+len(topic)+1)
	hdr = append(hdr, packets.Publish<<4|1) // QoS 0, retain
	for x := rem; ; {
		b := byte(x % 128)
		x /= 128
		if x > 0 {
			b |= 0x80
		}
		hdr = append(hdr, b)
		if x == 0 {
			break
		}
	}
	hdr = append(hdr, byte(len(topic)>>8), byte(len(topic)))
	hdr = append(hdr, topic...)
	if v5 {
		hdr = append(hdr, 0)
	}
	bufs := net.Buffers{hdr, payload}
	cl.Lock()
	defer cl.Unlock()
	if cl.Net.Conn == nil {
		return nil
	}
	cl.Net.Conn.SetWriteDeadline(time.Now().Add(h.writeTimeout))
	n, err := bufs.WriteTo(cl.Net.Conn)
	cl.Net.Conn.SetWriteDeadline(time.Time{})
	atomic.AddInt64(&h.srv.Info.BytesSent, n)
	if err != nil {
		return err
	}
	atomic.AddInt64(&h.srv.Info.PacketsSent, 1)
	atomic.AddInt64(&h.srv.Info.MessagesSent, 1)
	h.sent.Add(1)
	return nil
}
