package agent

// Downloading a release's chunks: the part file and its bbolt chunk
// bitmap (resume after a restart), the MQTT chunk window, verification
// before a byte touches the disk, and stall reports. Where chunks come
// from is a chunkSource (transport_source.go): HTTP(S) mirrors first
// (transport_mirror.go), then the broker's retained chunks.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	bolt "go.etcd.io/bbolt"
)

// dlRecord is the persisted progress of one app's download (bucket
// mqtt-downloads, key app name).
type dlRecord struct {
	Schema   int    `json:"schema"`
	SHA256   string `json:"sha256"` // payload sha256
	Version  string `json:"version"`
	Sequence uint64 `json:"sequence"`
	Have     []byte `json:"have"` // bitmap of verified, written chunks
}

type mqttDownload struct {
	rel *mqttRelease
	// full is the full release a delta download (rel) stands for; nil
	// when rel is the full release (transport_delta.go).
	full        *mqttRelease
	path        string
	f           *os.File
	have        []bool
	n           int // chunks in have
	outstanding map[int]string
	bad         map[int]int // corrupt copies received in a row, per chunk
	lastChunk   time.Time
	complete    bool
	stalls      int // consecutive stall checks without a chunk
	// HTTP(S) mirrors (transport_mirror.go), tried in order before the
	// broker; one that failed is skipped for the rest of the download.
	mirrors   []*httpMirror
	mirrorBad map[string]string // base URL → why it is not used any more
	inflight  map[int]bool      // chunks being fetched from a mirror
	gen       int               // bumped when fetches are cancelled: late results are ignored
	fetchCtx  context.Context   // cancelled by pause and abandon
	cancel    context.CancelFunc
}

// pause stops fetching dl's chunks (a hold); fill starts again.
func (t *mqttTransport) pause(dl *mqttDownload) {
	var topics []string
	for _, tp := range dl.outstanding {
		topics = append(topics, tp)
	}
	if len(topics) > 0 {
		t.client.Unsubscribe(topics...)
	}
	clear(dl.outstanding)
	clear(dl.bad)
	dl.stopMirrors()
}

func (t *mqttTransport) openDownload(a *Agent, ap *mqttApp, rel *mqttRelease) (*mqttDownload, error) {
	m := rel.m
	dir := filepath.Join(t.cfg.DataDir, "dl")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, ap.cfg.Name+"-"+m.Payload.SHA256+".part")
	rec, err := a.loadDownload(ap.cfg.Name)
	if err != nil {
		return nil, err
	}
	n := len(m.Payload.Chunks)
	dl := &mqttDownload{rel: rel, path: path, have: make([]bool, n), outstanding: map[int]string{}, bad: map[int]int{}, lastChunk: time.Now(),
		mirrors: t.mirrorsFor(rel), mirrorBad: map[string]string{}, inflight: map[int]bool{}}
	if rec != nil && rec.SHA256 == m.Payload.SHA256 {
		for i := 0; i < n; i++ {
			if i/8 < len(rec.Have) && rec.Have[i/8]&(1<<(i%8)) != 0 {
				dl.have[i] = true
				dl.n++
			}
		}
	} else {
		// Another release's leftovers.
		if rec != nil {
			os.Remove(filepath.Join(dir, ap.cfg.Name+"-"+rec.SHA256+".part"))
		}
		if err := a.saveDownload(ap.cfg.Name, &dlRecord{Schema: 1, SHA256: m.Payload.SHA256, Version: m.Version, Sequence: m.Sequence}); err != nil {
			return nil, err
		}
	}
	// Only what is still missing needs space: the part file is sparse and
	// already holds the chunks downloaded before.
	if err := t.checkSpace(a, m, m.Payload.Size-dl.doneBytes()); err != nil {
		return nil, err
	}
	f, err := openPartFile(path) // never through a link (safefile.go)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() < m.Payload.Size && dl.n > 0 {
		// Recorded chunks must be in the file; a short file means the record
		// is not to be trusted (never happens with fsync before record).
		for i := range dl.have {
			if dl.have[i] && int64(i)*m.Payload.ChunkSize+m.Payload.ChunkLen(i) > fi.Size() {
				dl.have[i] = false
				dl.n--
			}
		}
	}
	if err := f.Truncate(m.Payload.Size); err != nil {
		f.Close()
		return nil, err
	}
	dl.f = f
	t.stats.Resumed.Add(int64(dl.n))
	dl.complete = dl.n == n
	return dl, nil
}

// abandon drops ap's download and its file.
func (t *mqttTransport) abandon(ap *mqttApp) {
	dl := ap.dl
	if dl == nil {
		return
	}
	var topics []string
	for _, tp := range dl.outstanding {
		topics = append(topics, tp)
	}
	if len(topics) > 0 {
		t.client.Unsubscribe(topics...)
	}
	dl.stopMirrors()
	if dl.f != nil {
		dl.f.Close()
	}
	os.Remove(dl.path)
	if a := t.agent(); a != nil {
		a.saveDownload(ap.cfg.Name, nil)
	}
	ap.dl = nil
	ap.waitOpens = time.Time{}
}

// fill keeps up to mqttWindow chunk subscriptions outstanding, or installs
// when every chunk is here.
func (t *mqttTransport) fill(ctx context.Context, ap *mqttApp) {
	dl := ap.dl
	if dl == nil {
		return
	}
	if dl.n == len(dl.have) {
		dl.complete = true // also when the last chunk was written but its record failed
	}
	if dl.complete {
		if !t.windowOpen(ap) {
			return // housekeeping installs when the maintenance window opens
		}
		t.install(ctx, ap)
		return
	}
	mirror := dl.mirror()
	subs := map[string]byte{}
	for i := range dl.have {
		if dl.have[i] || dl.inflight[i] {
			continue
		}
		if _, ok := dl.outstanding[i]; ok {
			continue
		}
		if mirror != nil {
			// While a mirror works, no chunk goes over MQTT.
			if len(dl.inflight) < mirrorWorkers {
				t.fetchMirror(ctx, ap, mirror, i)
			}
			continue
		}
		if len(dl.outstanding) >= mqttWindow {
			break
		}
		tp, err := protocol.ChunkTopic(dl.rel.m.App, dl.rel.m.Payload.SHA256, i)
		if err != nil {
			continue
		}
		dl.outstanding[i] = tp
		subs[tp] = 0
	}
	if len(subs) > 0 && len(dl.outstanding) == len(subs) {
		dl.lastChunk = time.Now()
	}
	t.subscribe(subs)
}

func (t *mqttTransport) chunk(ctx context.Context, tp protocol.Topic, payload []byte) {
	ap := t.apps[tp.App]
	if ap == nil || ap.dl == nil || ap.dl.rel.m.Payload.SHA256 != tp.SHA256 {
		return // a late delivery for something no longer wanted
	}
	dl := ap.dl
	topic, ok := dl.outstanding[tp.Index]
	if !ok || dl.have[tp.Index] {
		return
	}
	p := &dl.rel.m.Payload
	if err := t.checkChunkSpace(ap, len(payload)); err != nil {
		t.transient(ap, dl.rel.m, err, false)
		return
	}
	if err := protocol.VerifyChunk(p, tp.Index, payload); err != nil {
		t.stats.ChunksBad.Add(1)
		dl.bad[tp.Index]++
		if n := dl.bad[tp.Index]; n >= mqttChunkTries && dl.full != nil {
			t.deltaFallback(ctx, ap, fmt.Errorf("chunk %d of the delta from the broker does not match the signed hash %d times", tp.Index, n))
			return
		} else if n >= mqttChunkTries {
			t.transient(ap, dl.rel.m, fmt.Errorf("chunk %d from the broker does not match the signed hash %d times: the broker's copy is corrupt; republish the release", tp.Index, n), true)
			return
		}
		// Ask again at once: unsubscribing and subscribing again makes
		// the broker send the retained copy again.
		t.logf("mqtt: %s %s: chunk %d from the broker does not match the signed hash (%v); asking for it again", dl.rel.m.App, dl.rel.m.Version, tp.Index, err)
		t.client.Unsubscribe(topic)
		t.subscribe(map[string]byte{topic: 0})
		return
	}
	if err := t.writeChunk(ap, tp.Index, payload); err != nil {
		t.transient(ap, dl.rel.m, fmt.Errorf("cannot store chunk %d: %w", tp.Index, err), false)
		return
	}
	delete(dl.outstanding, tp.Index)
	delete(dl.bad, tp.Index)
	t.client.Unsubscribe(topic)
	t.stored(ctx, ap, len(payload))
}

// stored: a verified chunk of n bytes was written and recorded (from the
// broker or a mirror); fetch on.
func (t *mqttTransport) stored(ctx context.Context, ap *mqttApp, n int) {
	dl := ap.dl
	dl.lastChunk = time.Now()
	dl.stalls = 0
	if ap.stallErr {
		ap.lastErr, ap.stallErr = "", false // chunks flow again
	}
	t.stats.ChunksReceived.Add(1)
	t.stats.ChunkBytes.Add(int64(n))
	if dl.n == len(dl.have) {
		dl.complete = true
	}
	t.fill(ctx, ap)
}

// writeChunk writes a verified chunk at its offset, fsyncs, then records it.
func (t *mqttTransport) writeChunk(ap *mqttApp, i int, data []byte) error {
	dl := ap.dl
	if _, err := dl.f.WriteAt(data, int64(i)*dl.rel.m.Payload.ChunkSize); err != nil {
		return err
	}
	if err := dl.f.Sync(); err != nil {
		return err
	}
	dl.have[i] = true
	dl.n++
	a := t.agent()
	if a == nil {
		return errors.New("state database unavailable")
	}
	rec := &dlRecord{Schema: 1, SHA256: dl.rel.m.Payload.SHA256, Version: dl.rel.m.Version, Sequence: dl.rel.m.Sequence, Have: make([]byte, (len(dl.have)+7)/8)}
	for j, h := range dl.have {
		if h {
			rec.Have[j/8] |= 1 << (j % 8)
		}
	}
	if err := a.saveDownload(ap.cfg.Name, rec); err != nil {
		return err
	}
	failpoint("mqtt-after-chunk")
	return nil
}

// stallDelay is how long a download waits for a chunk after n stall
// checks in a row found none: mqttStall doubling up to mqttStallMax.
func stallDelay(n int) time.Duration {
	d := mqttStall
	for i := 0; i < n && d < mqttStallMax; i++ {
		d *= 2
	}
	return min(d, mqttStallMax)
}

// stalled: chunks are outstanding and none came for stallDelay. The device
// says which chunks it lacks and what the operator can do, in its status,
// and asks again with backoff.
func (t *mqttTransport) stalled(ap *mqttApp) {
	dl := ap.dl
	m := dl.rel.m
	waited := time.Since(dl.lastChunk).Round(time.Second)
	dl.stalls++
	idx := make([]int, 0, len(dl.outstanding))
	for i := range dl.outstanding {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	list := make([]string, len(idx))
	for i, n := range idx {
		list[i] = fmt.Sprint(n)
	}
	first, _ := protocol.ChunkTopic(m.App, m.Payload.SHA256, idx[0])
	msg := fmt.Sprintf("%s %s: no chunk has arrived for %s; the broker does not send chunk %s of %d (%d of %d here; e.g. %s); publish the release again (edgefleet publish) or check that the broker keeps retained messages; asking again in %s",
		m.App, m.Version, waited, strings.Join(list, ", "), len(dl.have), dl.n, len(dl.have), first, stallDelay(dl.stalls))
	t.logf("mqtt: %s", msg)
	if ap.lastErr == "" || ap.stallErr {
		ap.lastErr, ap.stallErr = msg, true
	}
	// With other brokers configured, leave this one: a cluster node can
	// serve a stale retained set that never holds these chunks. The
	// reconnect subscribes to the outstanding chunks again.
	if t.switchBroker(fmt.Sprintf("%s %s: chunks stalled for %s", m.App, m.Version, waited)) {
		dl.lastChunk = time.Now()
		return
	}
	t.resubscribeChunks(dl)
}

// doneBytes counts the payload bytes of the chunks already downloaded.
func (dl *mqttDownload) doneBytes() int64 {
	done := int64(0)
	for i, h := range dl.have {
		if h {
			done += dl.rel.m.Payload.ChunkLen(i)
		}
	}
	return done
}

// checkChunkSpace checks, before a chunk is written, that the write
// leaves the state files their reserve (another program may have filled
// data_dir since the download started).
func (t *mqttTransport) checkChunkSpace(ap *mqttApp, n int) error {
	a := t.agent()
	if a == nil {
		return errors.New("state database unavailable")
	}
	return t.checkSpace(a, ap.dl.rel.m, int64(n))
}

// checkSpace refuses a download (or one chunk of it) that would leave less
// than mqttStateReserve free in data_dir: the state database and floor
// file must always be writable (an install, a sideload or a rollback
// records itself there).
func (t *mqttTransport) checkSpace(a *Agent, m *protocol.Manifest, need int64) error {
	st, err := a.opts.Storage(t.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("read free storage on data_dir %s: %w", t.cfg.DataDir, err)
	}
	if st.Free-need >= mqttStateReserve {
		return nil
	}
	return fmt.Errorf("not enough space in data_dir %s to download %s %s: %s still to fetch, %s kept free for the agent's state, %s free; free some space there (the download goes on by itself): %w",
		t.cfg.DataDir, m.App, m.Version, hardware.Size(need), hardware.Size(mqttStateReserve), hardware.Size(st.Free), ErrNoSpace)
}

func (a *Agent) loadDownload(app string) (*dlRecord, error) {
	var rec *dlRecord
	err := a.withDB(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketDownloads)
			if b == nil {
				return nil
			}
			v := b.Get([]byte(app))
			if v == nil {
				return nil
			}
			var r dlRecord
			if err := protocol.StrictUnmarshalExtensible(v, &r); err != nil || r.Schema != 1 {
				return nil // an unreadable record only costs a fresh download
			}
			rec = &r
			return nil
		})
	})
	return rec, err
}

// saveDownload records (nil: forgets) app's download progress.
func (a *Agent) saveDownload(app string, rec *dlRecord) error {
	return a.withDB(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketDownloads)
			if err != nil {
				return err
			}
			if rec == nil {
				return b.Delete([]byte(app))
			}
			v, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			return b.Put([]byte(app), v)
		})
	})
}

var bucketDownloads = []byte("mqtt-downloads")
