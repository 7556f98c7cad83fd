package fleet

import (
	"fmt"
	"log/slog"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi logs whole packets as attributes ("error processing packet" with
// "pk", "failed to publish retained message" with "packet"): slog's text
// handler prints a packet's payload as a decimal byte array, so one warning
// about a 1 KiB status was a ~4 KB line, and one about a chunk would be
// half a megabyte. brokerLogAttr replaces every packet with a short
// summary: type, packet id, topic (clipped), payload size.
func brokerLogAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	switch v := a.Value.Any().(type) {
	case packets.Packet:
		return slog.String(a.Key, packetSummary(&v))
	case *packets.Packet:
		if v != nil {
			return slog.String(a.Key, packetSummary(v))
		}
	}
	return a
}

// packetSummary describes pk in one short line without its payload or
// credentials.
func packetSummary(pk *packets.Packet) string {
	typ := fmt.Sprintf("type %d", pk.FixedHeader.Type)
	if n, ok := packets.PacketNames[pk.FixedHeader.Type]; ok {
		typ = n
	}
	s := fmt.Sprintf("%s id=%d qos=%d", typ, pk.PacketID, pk.FixedHeader.Qos)
	if pk.TopicName != "" {
		t := pk.TopicName
		if len(t) > 160 {
			t = t[:160] + "…"
		}
		s += fmt.Sprintf(" topic=%q", t)
	}
	if len(pk.Filters) > 0 {
		s += fmt.Sprintf(" filters=%d first=%q", len(pk.Filters), clipString(pk.Filters[0].Filter, 160))
	}
	if len(pk.Payload) > 0 {
		s += fmt.Sprintf(" payload=%dB", len(pk.Payload))
	}
	return s
}

func clipString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
