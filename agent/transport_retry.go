package agent

// Retries and holds (SPEC.md §8.7): a release that failed in a way that
// may pass is paused with backoff; a busy app is tried again soon.

import (
	"fmt"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// mqttHold pauses one release (by payload sha256) after a failure that
// may pass: nothing is fetched or installed for it before until.
type mqttHold struct {
	sha       string
	attempts  int // transient failures so far (the backoff exponent)
	until     time.Time
	chunk     bool // held for a corrupt chunk: a new delivery of the release ends the hold
	refetches int  // whole-payload mismatches after a complete download
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

// retryDelay is the backoff after n transient failures.
func retryDelay(n int) time.Duration {
	d := mqttRetryMin
	for i := 1; i < n && d < mqttRetryMax; i++ {
		d *= 2
	}
	return min(d, mqttRetryMax)
}
