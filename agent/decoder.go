package agent

import (
	"fmt"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// Bounds of the default xz decoder memory limit (limits.max_decoder_memory).
const (
	// DefaultMaxDecoderMemory caps the default: the largest dictionary a
	// manifest may declare at all.
	DefaultMaxDecoderMemory = protocol.MaxXZDictSize
	// minDefaultDecoderMemory is the default's floor: even a device short
	// of memory accepts the 1MiB dictionary of the 32-bit profiles.
	minDefaultDecoderMemory = 1 << 20
	// minDecoderMemory is the smallest limit a config may set: xz's
	// smallest dictionary.
	minDecoderMemory = 4 << 10
)

// defaultDecoderLimit is the default limit for a device with mem: a
// quarter of MemAvailable, at most DefaultMaxDecoderMemory, at least 1MiB.
// Unknown memory gives DefaultMaxDecoderMemory (the protocol's own bound).
func defaultDecoderLimit(mem hardware.MemoryFacts, err error) (int64, string) {
	if err != nil || mem.Available <= 0 {
		return DefaultMaxDecoderMemory, fmt.Sprintf("the default %s, as this device's available memory is unknown", hardware.Size(DefaultMaxDecoderMemory))
	}
	lim := min(int64(DefaultMaxDecoderMemory), mem.Available/4)
	lim = max(lim, minDefaultDecoderMemory)
	return lim, fmt.Sprintf("the default: a quarter of the %s available when the agent started, between %s and %s",
		hardware.Size(mem.Available), hardware.Size(minDefaultDecoderMemory), hardware.Size(DefaultMaxDecoderMemory))
}

// setDecoderLimit fixes the agent's decoder memory limit at Open.
func (a *Agent) setDecoderLimit() {
	if m := a.cfg.Limits.MaxDecoderMemory; m > 0 {
		a.decoderLimit, a.decoderWhy = int64(m), "limits.max_decoder_memory in the agent config"
		return
	}
	a.decoderLimit, a.decoderWhy = defaultDecoderLimit(a.opts.Memory())
}

// DecoderLimit is the largest xz dictionary this agent accepts, and where
// that number comes from.
func (a *Agent) DecoderLimit() (int64, string) { return a.decoderLimit, a.decoderWhy }

// checkDecoderMemory refuses, before anything is fetched or staged, a
// release whose xz decoder would allocate more than this device allows.
func (a *Agent) checkDecoderMemory(m *protocol.Manifest) error {
	if m.Payload.Encoding != protocol.EncodingXZ || m.Payload.XZDictSize <= a.decoderLimit {
		return nil
	}
	return fmt.Errorf("%s %s is compressed with a %s xz dictionary (payload.xz_dict_size %d), which its decoder would allocate, but this device allows %s of decoder memory (%s); repack with a smaller xz_dict_size in the profile (1MiB suits small boards), or raise limits.max_decoder_memory in the agent config: %w",
		m.App, m.Version, hardware.Size(m.Payload.XZDictSize), m.Payload.XZDictSize, hardware.Size(a.decoderLimit), a.decoderWhy, ErrDecoderMemory)
}
