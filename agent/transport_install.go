package agent

// Installing a complete download through the daemon's sideload pipeline.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

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
	if t.deltaInstalled(ctx, ap, err) {
		return // fell back to the full release
	}
	m := ap.dl.rel.m
	rel := ap.dl.rel
	if ap.dl.full != nil {
		rel = ap.dl.full
	}
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
			t.fatal(ap, rel, fmt.Errorf("the downloaded payload does not verify although each of its chunks did, twice: the release's manifest is inconsistent or this device's storage corrupts data (%w)", err))
			break
		}
		t.logf("mqtt: %s %s: the downloaded payload does not verify (%v); fetching it again", m.App, m.Version, err)
		t.abandon(ap)
		t.evaluate(ctx, ap)
	case Fatal(err):
		t.fatal(ap, rel, err) // the pipeline recorded the refusal in the app's history
	default:
		t.transient(ap, m, err, false) // storage full, I/O, state database…
	}
	t.publishStatus()
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
