package dashboard

import (
	"bytes"
	"compress/gzip"
	"context"
	"embed"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// client is one page's event stream.
type client struct {
	ch   chan []byte
	gone chan struct{} // closed when the server drops a slow client
}

// clientBuffer is how many events a page may fall behind before it is
// dropped (it reconnects and gets a fresh snapshot).
const clientBuffer = 32

// events streams server-sent events: a snapshot, then deltas.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	c := &client{ch: make(chan []byte, clientBuffer), gone: make(chan struct{})}
	s.mu.Lock()
	if len(s.subs) >= s.opts.MaxClients {
		s.mu.Unlock()
		http.Error(w, fmt.Sprintf("%d pages are connected, the most this dashboard serves (--max-pages); close one", s.opts.MaxClients), http.StatusServiceUnavailable)
		return
	}
	snap := s.snapshot(time.Now())
	s.subs[c] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, c)
		s.mu.Unlock()
	}()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)
	// Compressed when the browser takes it: a snapshot of 10,000 devices
	// is 4 MiB of JSON and about 5 % of that gzipped. Each event is
	// flushed whole (a sync flush), so the page gets it at once.
	var out io.Writer = w
	var gz *gzip.Writer
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		h.Set("Content-Encoding", "gzip")
		h.Set("Vary", "Accept-Encoding")
		gz, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close()
		out = gz
	}
	write := func(format string, a ...any) bool {
		rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(out, format, a...); err != nil {
			return false
		}
		if gz != nil && gz.Flush() != nil {
			return false
		}
		fl.Flush()
		return true
	}
	send := func(b []byte) bool { return write("data: %s\n\n", b) }
	if !send(snap) {
		return
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-c.gone:
			return
		case b := <-c.ch:
			if !send(b) {
				return
			}
		case <-keep.C:
			if !write(": keep-alive\n\n") {
				return
			}
		}
	}
}

// pushLoop sends, at most once per Tick, the devices that changed, the
// catalog when it changed, and a new timeline point.
func (s *Server) pushLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.Tick)
	defer t.Stop()
	lastSample := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		s.mu.Lock()
		b, ok := s.delta(now, now.Sub(lastSample) >= 10*time.Second)
		if ok {
			lastSample = now
		}
		var to []*client
		if b != nil {
			for c := range s.subs {
				to = append(to, c)
			}
		}
		s.mu.Unlock()
		for _, c := range to {
			select {
			case c.ch <- b:
			default:
				s.mu.Lock()
				if s.subs[c] {
					delete(s.subs, c)
					close(c.gone)
				}
				s.mu.Unlock()
			}
		}
	}
}

// delta is the event for what changed since the last one (nil: nothing);
// it samples the timeline when devices changed or resample is set, and
// reports whether it sampled. Called with s.mu held.
func (s *Server) delta(now time.Time, resample bool) ([]byte, bool) {
	st := s.st
	sampled := false
	var point *Point
	if len(st.dirty) > 0 || resample {
		p := st.sample(now.UTC())
		sampled = true
		if st.addPoint(p) {
			point = &p
		}
	}
	if len(st.dirty) == 0 && !st.catalogDirty && point == nil {
		return nil, sampled
	}
	if len(s.subs) == 0 {
		// Nobody to tell: rows are rebuilt lazily, and the next page
		// gets a snapshot (which rebuilds the catalog if it changed).
		clear(st.dirty)
		return nil, sampled
	}
	var b bytes.Buffer
	b.WriteString(`{"type":"delta","now":`)
	writeJSONTo(&b, now.UTC())
	b.WriteString(`,"devices":[`)
	var removed []string
	n := 0
	for id := range st.dirty {
		row := st.rowJSON(id)
		if row == nil {
			removed = append(removed, id)
			continue
		}
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		b.Write(row)
	}
	b.WriteString(`],"removed":`)
	if removed == nil {
		removed = []string{}
	}
	writeJSONTo(&b, removed)
	if st.catalogDirty {
		b.WriteString(`,"catalog":`)
		b.Write(st.catalog())
		b.WriteString(`,"connection":`)
		writeJSONTo(&b, s.conn)
	}
	if point != nil {
		b.WriteString(`,"point":`)
		writeJSONTo(&b, point)
	}
	b.WriteString(`,"malformed":`)
	writeJSONTo(&b, st.malformedList())
	fmt.Fprintf(&b, `,"dropped":%d}`, st.dropped())
	clear(st.dirty)
	return b.Bytes(), sampled
}

// asset serves an embedded file, gzipped when the browser takes it.
func (s *Server) asset(name string) http.HandlerFunc {
	raw, err := assets.ReadFile("assets/" + name)
	if err != nil {
		panic("dashboard: missing embedded asset " + name)
	}
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	zw.Write(raw)
	zw.Close()
	ctype := map[string]string{"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}[name[strings.LastIndexByte(name, '.')+1:]]
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("Vary", "Accept-Encoding")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			h.Set("Content-Encoding", "gzip")
			w.Write(z.Bytes())
			return
		}
		w.Write(raw)
	}
}
