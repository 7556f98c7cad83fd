package agent

// HTTP(S) mirrors of release chunks (protocol/SPEC.md §8.9). A mirror is
// untrusted: every chunk is verified against the signed manifest before
// it touches the disk, a response is read up to the chunk's signed length
// + 1 byte (never more memory than one chunk), a request has a timeout and
// a minimum progress (a trickle is abandoned), and redirects go only to
// the same host or to https. Any failure sends the chunk to the next
// mirror, then to the broker.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent/internal/httpget"
	"github.com/edgefleet/edgefleet/protocol"
)

// Mirror rules. Variables so that tests can shorten them.
var (
	// mirrorWorkers bounds the chunk requests in flight per download.
	mirrorWorkers = 4
	// mirrorTimeout bounds one chunk request, headers and body.
	mirrorTimeout = 60 * time.Second
	// mirrorProgressWindow and mirrorProgressMin: a response that
	// delivers fewer than mirrorProgressMin bytes in any window is
	// abandoned (a server that trickles one byte a second).
	mirrorProgressWindow       = 10 * time.Second
	mirrorProgressMin    int64 = 4 << 10
	// mirrorMaxRedirects bounds the redirects followed per request.
	mirrorMaxRedirects = 3
)

// errMirrorSlow: the response was slower than the minimum progress.
var errMirrorSlow = errors.New("too slow")

// httpMirror is one mirror base URL. Requests go through httpget (one
// GET per connection, no net/http: see that package for what it does not
// support, proxies among them).
type httpMirror struct {
	base string
	opt  *httpget.Options
}

// mirrorRoots is the system roots plus the CA certificates in the PEM
// file path (config mirror_ca).
func mirrorRoots(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// newHTTPMirror returns the mirror at base (checked with
// protocol.CheckMirrorURL by the caller); roots nil means the system's.
func newHTTPMirror(base string, roots *x509.CertPool) *httpMirror {
	return &httpMirror{base: base, opt: &httpget.Options{
		DialTimeout:      10 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		HeaderTimeout:    30 * time.Second,
		// One connection per chunk: a resumed TLS session spares the
		// device the certificate chain verification for every chunk
		// after the first (TLS 1.3 resumption still runs the key
		// exchange).
		TLS: &tls.Config{RootCAs: roots, ClientSessionCache: tls.NewLRUClientSessionCache(2 * mirrorWorkers)},
	}}
}

// checkMirrorRedirect follows a redirect from prev to next only to the
// same host as first (http or https) or to https anywhere, at most
// mirrorMaxRedirects times (n is this redirect's number, from 1); never
// from https down to http.
func checkMirrorRedirect(first, prev, next *url.URL, n int) error {
	if n > mirrorMaxRedirects {
		return fmt.Errorf("more than %d redirects", mirrorMaxRedirects)
	}
	switch {
	case next.Scheme == "https":
		return nil
	case prev.Scheme == "https":
		return fmt.Errorf("redirect from https down to %s refused", next.Redacted())
	case next.Scheme == "http" && next.Host == first.Host:
		return nil
	}
	return fmt.Errorf("redirect to %s refused (only the same host or https)", next.Redacted())
}

// get GETs u, following redirects as checkMirrorRedirect allows.
func (m *httpMirror) get(ctx context.Context, u string) (*httpget.Response, error) {
	first, err := url.Parse(u)
	if err != nil {
		return nil, err
	}
	cur := first
	for n := 1; ; n++ {
		resp, err := httpget.Get(ctx, cur, m.opt)
		if err != nil || !resp.IsRedirect() {
			return resp, err
		}
		loc := resp.Location()
		resp.Body.Close()
		if loc == "" {
			return nil, fmt.Errorf("GET %s: %s without a Location", cur.Redacted(), resp.Status)
		}
		next, err := cur.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("GET %s: %s to a Location that does not parse: %w", cur.Redacted(), resp.Status, err)
		}
		next.Fragment, next.RawFragment = "", ""
		if err := checkMirrorRedirect(first, cur, next, n); err != nil {
			return nil, fmt.Errorf("GET %s: %w", first.Redacted(), err)
		}
		cur = next
	}
}

func (m *httpMirror) String() string { return "mirror " + m.base }

// Fetch gets chunk i with one GET, reading at most its signed length + 1
// byte, and verifies it.
func (m *httpMirror) Fetch(ctx context.Context, app string, p *protocol.Payload, i int) ([]byte, error) {
	if i < 0 || i >= len(p.Chunks) {
		return nil, fmt.Errorf("chunk %d of %d: %w", i, len(p.Chunks), errChunkMissing)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, mirrorTimeout, fmt.Errorf("no complete answer within %s: %w", mirrorTimeout, errMirrorSlow))
	defer cancel()
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	u := protocol.MirrorChunkURL(m.base, app, p.SHA256, i)
	// The minimum progress: checked every window, from the request on
	// (a server that never answers is slow too).
	var got progress
	var watch *time.Timer
	var last int64 // read and written by the timer's goroutine only
	check := func() {
		n := got.load()
		if n-last < mirrorProgressMin && n < p.ChunkLen(i) {
			stop(fmt.Errorf("%d bytes in %s, less than the %d required: %w", n-last, mirrorProgressWindow, mirrorProgressMin, errMirrorSlow))
			return
		}
		last = n
		watch.Reset(mirrorProgressWindow)
	}
	watch = time.AfterFunc(mirrorProgressWindow, check)
	defer watch.Stop()
	resp, err := m.get(ctx, u)
	if err != nil {
		return nil, m.fail(ctx, i, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == 404 || resp.StatusCode == 410:
		return nil, fmt.Errorf("chunk %d: %s: %w", i, resp.Status, errChunkMissing)
	case resp.StatusCode != 200:
		return nil, fmt.Errorf("chunk %d: %s", i, resp.Status)
	}
	want := p.ChunkLen(i)
	if resp.ContentLength > want {
		return nil, fmt.Errorf("chunk %d: %d bytes announced, the signed chunk has %d: %w", i, resp.ContentLength, want, errChunkCorrupt)
	}
	buf := make([]byte, want+1)
	n, err := io.ReadFull(io.TeeReader(resp.Body, &got), buf)
	switch {
	case err == nil:
		return nil, fmt.Errorf("chunk %d: more than the signed %d bytes: %w", i, want, errChunkCorrupt)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		// the body ended: check it below
	default:
		return nil, m.fail(ctx, i, err)
	}
	if err := protocol.VerifyChunk(p, i, buf[:n]); err != nil {
		return nil, fmt.Errorf("chunk %d: %v: %w", i, err, errChunkCorrupt)
	}
	return buf[:n:n], nil
}

// fail explains a transport error, with the progress rule's cause when
// that is what cancelled it.
func (m *httpMirror) fail(ctx context.Context, i int, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(cause, errMirrorSlow) {
		return fmt.Errorf("chunk %d: %w", i, cause)
	}
	return fmt.Errorf("chunk %d: %w", i, err)
}

// progress counts bytes written to it (a TeeReader's side).
type progress struct{ n atomic.Int64 }

func (p *progress) Write(b []byte) (int, error) { p.n.Add(int64(len(b))); return len(b), nil }
func (p *progress) load() int64                 { return p.n.Load() }

// mirrorsFor lists the mirrors of a release: those its envelope names,
// then the agent config's, without duplicates, kept per base URL.
func (t *mqttTransport) mirrorsFor(rel *mqttRelease) []*httpMirror {
	var out []*httpMirror
	seen := map[string]bool{}
	for _, list := range [][]string{rel.env.Mirrors, t.cfg.Mirrors} {
		for _, base := range list {
			if seen[base] || protocol.CheckMirrorURL(base) != nil {
				continue
			}
			seen[base] = true
			if t.mirrors == nil {
				t.mirrors = map[string]*httpMirror{}
				if t.cfg.MirrorCA != "" {
					// Checked by Config.Validate; a file gone since then
					// leaves the system roots, and the reason in the log.
					var err error
					if t.mirrorRoots, err = mirrorRoots(t.cfg.MirrorCA); err != nil {
						t.logf("mirror_ca: %v; https mirrors are checked against the system roots only", err)
					}
				}
			}
			m := t.mirrors[base]
			if m == nil {
				m = newHTTPMirror(base, t.mirrorRoots)
				t.mirrors[base] = m
			}
			out = append(out, m)
		}
	}
	return out
}

// mirror is the mirror dl fetches from now: the first that has not
// failed; nil when none is left (the broker serves the rest).
func (dl *mqttDownload) mirror() *httpMirror {
	for _, m := range dl.mirrors {
		if _, bad := dl.mirrorBad[m.base]; !bad {
			return m
		}
	}
	return nil
}

// stopMirrors cancels dl's mirror requests; their late results are
// ignored.
func (dl *mqttDownload) stopMirrors() {
	if dl.cancel != nil {
		dl.cancel()
		dl.cancel, dl.fetchCtx = nil, nil
	}
	dl.gen++
	clear(dl.inflight)
}

// fetchMirror fetches chunk i of ap's download from m in the background;
// the result comes back to the loop as a "mirror" event.
func (t *mqttTransport) fetchMirror(ctx context.Context, ap *mqttApp, m *httpMirror, i int) {
	dl := ap.dl
	if dl.fetchCtx == nil {
		dl.fetchCtx, dl.cancel = context.WithCancel(ctx)
	}
	dl.inflight[i] = true
	fctx, gen, app, p := dl.fetchCtx, dl.gen, ap.cfg.Name, &dl.rel.m.Payload
	go func() {
		data, err := m.Fetch(fctx, app, p, i)
		ev := mqttEvent{kind: "mirror", app: app, topic: p.SHA256, index: i, payload: data, err: err, source: m.base, gen: gen}
		select {
		case t.events <- ev: // never dropped: a lost result would stall the chunk
		case <-ctx.Done():
		}
	}()
}

// mirrorResult takes a mirror's answer for one chunk: write it, or move
// the chunk (and the rest of the download) to the next mirror or the
// broker and say why in the status.
func (t *mqttTransport) mirrorResult(ctx context.Context, ev mqttEvent) {
	ap := t.apps[ev.app]
	if ap == nil || ap.dl == nil || ap.dl.rel.m.Payload.SHA256 != ev.topic || ap.dl.gen != ev.gen {
		return // cancelled, or a download no longer wanted
	}
	dl := ap.dl
	delete(dl.inflight, ev.index)
	if dl.have[ev.index] || ap.installing {
		return
	}
	if ev.err != nil {
		t.mirrorFailed(ap, ev.source, ev.index, ev.err)
		t.fill(ctx, ap)
		return
	}
	if err := t.checkChunkSpace(ap, len(ev.payload)); err != nil {
		t.transient(ap, dl.rel.m, err, false)
		return
	}
	if err := t.writeChunk(ap, ev.index, ev.payload); err != nil {
		t.transient(ap, dl.rel.m, fmt.Errorf("cannot store chunk %d: %w", ev.index, err), false)
		return
	}
	t.stats.MirrorChunks.Add(1)
	t.stored(ctx, ap, len(ev.payload))
}

// mirrorFailed stops using a mirror for ap's download and notes why.
func (t *mqttTransport) mirrorFailed(ap *mqttApp, base string, i int, err error) {
	dl := ap.dl
	var what string
	switch {
	case errors.Is(err, errChunkCorrupt):
		what = fmt.Sprintf("served chunk %d with the wrong bytes", i)
	case errors.Is(err, errChunkMissing):
		what = fmt.Sprintf("does not have chunk %d", i)
	case errors.Is(err, errMirrorSlow):
		what = fmt.Sprintf("was too slow serving chunk %d", i)
	default:
		what = fmt.Sprintf("failed on chunk %d", i)
	}
	dl.mirrorBad[base] = what
	next := "the broker"
	if m := dl.mirror(); m != nil {
		next = m.String()
	}
	ap.mirrorNote = fmt.Sprintf("mirror %s %s (%v); fetching it and the rest from %s", base, what, err, next)
	if len(ap.mirrorNote) > 400 {
		ap.mirrorNote = ap.mirrorNote[:400]
	}
	t.stats.MirrorFailures.Add(1)
	t.logf("mqtt: %s %s: %s", dl.rel.m.App, dl.rel.m.Version, ap.mirrorNote)
}
