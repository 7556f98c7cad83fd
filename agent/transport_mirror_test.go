package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// publishMirrored publishes path on channel stable, exporting its chunks to
// dir and listing mirrors in the envelope.
func publishMirrored(t testing.TB, c paho.Client, k *kit, path, dir string, mirrors []string) *fleet.PublishResult {
	t.Helper()
	res, err := fleet.PublishBundle(context.Background(), c, path, fleet.PublishOptions{
		Keyring: protocol.NewKeyring(k.pub), Channel: "stable", MirrorDir: dir, Mirrors: mirrors})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// bundlePayload is the manifest and encoded payload of the bundle at path.
func bundlePayload(t testing.TB, k *kit, path string) (*protocol.Manifest, []byte) {
	t.Helper()
	m, chunks := bundleChunks(t, k, path)
	return m, bytes.Join(chunks, nil)
}

// TestMirrorNginxConverges: devices fetch every chunk from a real nginx
// serving the directory publish --mirror wrote, none over MQTT, and the
// broker's bytes per device drop to the manifest and statuses.
func TestMirrorNginxConverges(t *testing.T) {
	bin := testkit.NginxPath(t, "the HTTP mirror convergence test")
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	mdir := t.TempDir()
	base, accessLog := testkit.StartNginx(t, bin, mdir)
	br := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	url := "tcp://" + br.Addr()
	op := operator(t, url)
	const n = 3
	var devs []*mqttDevice
	for i := 0; i < n; i++ {
		devs = append(devs, startMQTTDevice(t, mqttConfig(t, k, fmt.Sprintf("mir-%02d", i), url)))
	}
	defer func() {
		for _, d := range devs {
			d.stop()
		}
	}()
	for _, d := range devs {
		eventually(t, d.id+" online", func() bool { return d.stats() != nil && d.a != nil })
	}
	time.Sleep(500 * time.Millisecond) // statuses of the first connect settle

	// Without a mirror: every chunk over MQTT. The operator's read-back of
	// its chunks (one payload per publish, operator traffic) is left out
	// of both measurements: what is measured is the devices' traffic.
	sent0 := br.BytesSent()
	if _, err := fleet.PublishBundle(context.Background(), op, v1, fleet.PublishOptions{Keyring: protocol.NewKeyring(k.pub), Channel: "stable", SkipReadBack: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		eventually(t, d.id+" commits 1.0.0", func() bool { return installedIs(d, "1.0.0", StateCommitted) })
	}
	time.Sleep(time.Second) // the last statuses
	without := (br.BytesSent() - sent0) / n

	// With a mirror: none.
	m2, _ := bundlePayload(t, k, v2)
	before := make([]int64, n)
	for i, d := range devs {
		before[i] = d.stats().ChunksReceived.Load() - d.stats().MirrorChunks.Load()
	}
	sent0 = br.BytesSent()
	res, err := fleet.PublishBundle(context.Background(), op, v2, fleet.PublishOptions{
		Keyring: protocol.NewKeyring(k.pub), Channel: "stable", MirrorDir: mdir, Mirrors: []string{base + "/"}, SkipReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.MirrorWritten != len(m2.Payload.Chunks) {
		t.Errorf("publish wrote %d mirror objects, want %d", res.MirrorWritten, len(m2.Payload.Chunks))
	}
	for _, d := range devs {
		eventually(t, d.id+" commits 2.0.0", func() bool { return installedIs(d, "2.0.0", StateCommitted) })
	}
	time.Sleep(time.Second)
	with := (br.BytesSent() - sent0) / n
	for i, d := range devs {
		if got := d.stats().MirrorChunks.Load(); got < int64(len(m2.Payload.Chunks)) {
			t.Errorf("%s fetched %d chunks from the mirror, want %d", d.id, got, len(m2.Payload.Chunks))
		}
		if mq := d.stats().ChunksReceived.Load() - d.stats().MirrorChunks.Load() - before[i]; mq != 0 {
			t.Errorf("%s fetched %d chunks over MQTT although the mirror works", d.id, mq)
		}
	}
	t.Logf("broker bytes per device: %d without a mirror, %d with nginx (payload %d bytes)", without, with, m2.Payload.Size)
	if with*20 > m2.Payload.Size {
		t.Errorf("with a mirror the broker sent %d bytes per device, more than 5%% of the %d-byte payload", with, m2.Payload.Size)
	}
	if log, _ := os.ReadFile(accessLog); bytes.Count(log, []byte(" 200 ")) < n*len(m2.Payload.Chunks) {
		t.Errorf("nginx served %d chunks, want %d:\n%s", bytes.Count(log, []byte(" 200 ")), n*len(m2.Payload.Chunks), log)
	}
	// Publishing again is idempotent: no object is rewritten.
	if res := publishMirrored(t, op, k, v2, mdir, []string{base + "/"}); res.MirrorWritten != 0 {
		t.Errorf("publishing again rewrote %d mirror objects", res.MirrorWritten)
	}
}

// hostileMirror serves the mirror directory dir, misbehaving on chunk 1
// as mode says.
func hostileMirror(t *testing.T, dir, mode, elsewhere string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, "/"))))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if !strings.HasSuffix(r.URL.Path, "/1") {
			w.Write(b)
			return
		}
		switch mode {
		case "wrong":
			b[0] ^= 0xff
			w.Write(b)
		case "truncated":
			w.Write(b[:len(b)/2])
		case "overlong":
			w.Write(append(b, 'x'))
		case "404":
			http.NotFound(w, r)
		case "500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "redirect":
			http.Redirect(w, r, elsewhere+r.URL.Path, http.StatusFound)
		case "trickle":
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			for i := range b {
				if _, err := w.Write(b[i : i+1]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestMirrorHostile: every way a mirror can misbehave ends in a correct
// install, from the next mirror or from the broker, with the reason in the
// device's status.
func TestMirrorHostile(t *testing.T) {
	old := [...]any{mirrorProgressWindow, mirrorProgressMin}
	mirrorProgressWindow, mirrorProgressMin = 300*time.Millisecond, 4<<10
	defer func() { mirrorProgressWindow, mirrorProgressMin = old[0].(time.Duration), old[1].(int64) }()
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	m, _ := bundlePayload(t, k, v1)
	if len(m.Payload.Chunks) < 3 {
		t.Fatalf("the test bundle has %d chunks; want at least 3", len(m.Payload.Chunks))
	}
	mdir := t.TempDir()
	good := httptest.NewServer(http.FileServer(http.Dir(mdir)))
	defer good.Close()
	// "localhost" is another host than 127.0.0.1 for the redirect rule.
	elsewhere := strings.Replace(good.URL, "127.0.0.1", "localhost", 1)
	for _, tc := range []struct {
		mode, why string
		second    bool // a good second mirror: nothing over MQTT
	}{
		{"wrong", "served chunk 1 with the wrong bytes", false},
		{"truncated", "served chunk 1 with the wrong bytes", false},
		{"overlong", "served chunk 1 with the wrong bytes", true},
		{"404", "does not have chunk 1", false},
		{"500", "failed on chunk 1", true},
		{"redirect", "refused", false},
		{"trickle", "too slow serving chunk 1", false},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			bad := hostileMirror(t, mdir, tc.mode, elsewhere)
			br := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
			url := "tcp://" + br.Addr()
			op := operator(t, url)
			view := fleetView(t, op)
			cfg := mqttConfig(t, k, "hostile-"+tc.mode, url)
			if tc.second {
				cfg.Mirrors = []string{good.URL}
			}
			d := startMQTTDevice(t, cfg)
			defer d.stop()
			publishMirrored(t, op, k, v1, mdir, []string{bad})
			eventually(t, "commits 1.0.0", func() bool { return installedIs(d, "1.0.0", StateCommitted) })
			next := "the broker"
			if tc.second {
				next = "mirror " + good.URL
			}
			eventually(t, "the status says why the mirror was left", func() bool {
				for _, ds := range view.Devices() {
					for _, a := range ds.Apps {
						if strings.Contains(a.Note, "mirror "+bad) && strings.Contains(a.Note, tc.why) && strings.Contains(a.Note, "from "+next) {
							t.Logf("note: %s", a.Note)
							return true
						}
					}
				}
				return false
			})
			st := d.stats()
			mq := st.ChunksReceived.Load() - st.MirrorChunks.Load()
			if tc.second && mq != 0 {
				t.Errorf("%d chunks over MQTT although a second mirror works", mq)
			}
			if !tc.second && mq == 0 {
				t.Errorf("no chunk came from the broker after the only mirror failed")
			}
		})
	}
}

// TestChunkSourceConformance is the one suite every chunk source passes
// (as restic's backend tests): all chunks of a real payload verify and
// reassemble it; a corrupt chunk is reported as errChunkCorrupt (never
// returned); a missing chunk is reported as errChunkMissing.
func TestChunkSourceConformance(t *testing.T) {
	k := newKit(t)
	path := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	m, payload := bundlePayload(t, k, path)
	p := &m.Payload
	type source struct {
		src chunkSource
		// corrupt serves other bytes for chunk i; remove makes i missing.
		corrupt, remove func(i int)
	}
	sources := map[string]func(t *testing.T) source{
		"nginx-mirror": func(t *testing.T) source {
			bin := testkit.NginxPath(t, "the chunk source conformance test for HTTP mirrors")
			dir := t.TempDir()
			br := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
			publishMirrored(t, operator(t, "tcp://"+br.Addr()), k, path, dir, nil)
			base, _ := testkit.StartNginx(t, bin, dir)
			file := func(i int) string {
				return filepath.Join(dir, filepath.FromSlash(protocol.MirrorChunkPath(m.App, p.SHA256, i)))
			}
			return source{src: newHTTPMirror(base, nil),
				corrupt: func(i int) {
					b, _ := os.ReadFile(file(i))
					b[len(b)/2] ^= 1
					os.WriteFile(file(i), b, 0o644)
				},
				remove: func(i int) { os.Remove(file(i)) }}
		},
		"mqtt-retained": func(t *testing.T) source {
			br := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
			op := operator(t, "tcp://"+br.Addr())
			publish(t, op, k, path, "")
			put := func(i int, b []byte) {
				tp, _ := protocol.ChunkTopic(m.App, p.SHA256, i)
				tok := op.Publish(tp, 1, true, b)
				tok.Wait()
			}
			return source{src: &mqttChunks{client: operator(t, "tcp://"+br.Addr()), wait: 2 * time.Second},
				corrupt: func(i int) {
					b := bytes.Clone(payload[int64(i)*p.ChunkSize : int64(i)*p.ChunkSize+p.ChunkLen(i)])
					b[len(b)/2] ^= 1
					put(i, b)
				},
				remove: func(i int) { put(i, nil) }}
		},
	}
	for name, open := range sources {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := context.Background()
			var all []byte
			for i := range p.Chunks {
				b, err := s.src.Fetch(ctx, m.App, p, i)
				if err != nil {
					t.Fatalf("chunk %d from %s: %v", i, s.src, err)
				}
				all = append(all, b...)
			}
			if !bytes.Equal(all, payload) {
				t.Fatalf("%s: the chunks do not reassemble the payload", s.src)
			}
			s.corrupt(1)
			if b, err := s.src.Fetch(ctx, m.App, p, 1); !errors.Is(err, errChunkCorrupt) || b != nil {
				t.Errorf("corrupt chunk 1: got %d bytes, %v; want errChunkCorrupt", len(b), err)
			}
			s.remove(2)
			if b, err := s.src.Fetch(ctx, m.App, p, 2); !errors.Is(err, errChunkMissing) || b != nil {
				t.Errorf("missing chunk 2: got %d bytes, %v; want errChunkMissing", len(b), err)
			}
			if b, err := s.src.Fetch(ctx, m.App, p, 0); err != nil || !bytes.Equal(b, payload[:p.ChunkLen(0)]) {
				t.Errorf("chunk 0 after the others failed: %v", err)
			}
		})
	}
}
