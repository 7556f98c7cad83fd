package fleet

import (
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// TargetingOptions signs the targeting of a published release (SPEC.md
// §8.13) with a targeting key the key set delegates.
type TargetingOptions struct {
	// Key is the targeting secret key. Required.
	Key protocol.PrivateKey
	// Lifetime is how long the targeting holds; devices refuse the
	// release after it unless it is published again. Default 30 days.
	Lifetime time.Duration
	// Rollout names the rollout (informational). Default none.
	Rollout string
}

// DefaultTargetingLifetime is TargetingOptions.Lifetime's default.
const DefaultTargetingLifetime = 30 * 24 * time.Hour

// target adds the signed targeting to env when o asks for it.
func (o *PublishOptions) target(env, rawManifest []byte) ([]byte, error) {
	t := o.Targeting
	if t == nil {
		return env, nil
	}
	life := t.Lifetime
	if life <= 0 {
		life = DefaultTargetingLifetime
	}
	now := time.Now().UTC().Truncate(time.Second)
	if o.Now != nil {
		now = o.Now().UTC().Truncate(time.Second)
	}
	st, err := protocol.SignTargeting(t.Key, rawManifest, protocol.Targeting{Channel: o.Channel, Device: o.Device, Rollout: t.Rollout, Issued: now, Expires: now.Add(life)})
	if err != nil {
		return nil, err
	}
	return protocol.WithTargeting(env, st)
}
