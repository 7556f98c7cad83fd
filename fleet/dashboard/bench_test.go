package dashboard

// Benchmarks of issue 13 (docs/BENCHMARKS.md): page weight on first load,
// time to first full render in a real Chromium, and memory per device.
// Run with scripts/bench-dashboard.sh.

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// simStatus is a device status as an agent sends it: labels, one app,
// the CPU line of a Pi 3.
func simStatus(i int, version string) []byte {
	s := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: fmt.Sprintf("sim-%05d", i), Profile: "rpi3",
		CPU: "arm64 cortex-a53 (fp, asimd, evtstrm, crc32, cpuid)", AgentVersion: "0.9.0", Channel: "stable",
		Labels: protocol.Labels{"site": []string{"berlin", "paris", "oslo"}[i%3], "hw": "rev2"}, Time: time.Now().UTC(), Online: true,
		Apps: []protocol.AppReport{{App: "hello", Version: version, Sequence: 3, State: "committed"}}}
	if i%50 == 0 {
		s.Apps[0].State, s.Apps[0].LastError = "rolled-back", "health check failed 3 times: exit status 1; last output: connection refused"
	}
	b, err := s.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

func presence(i int) (string, []byte) {
	id := fmt.Sprintf("sim-%05d", i)
	t, _ := protocol.PresenceTopic(id)
	b, _ := (&protocol.Presence{Schema: protocol.MQTTSchemaVersion, Device: id, Online: true, Time: time.Now().UTC()}).Marshal()
	return t, b
}

// BenchmarkPageWeight reports the bytes a browser transfers on first
// load: the page, script, style and session (gzipped, as served), and
// the first event with 1,000 devices, raw and gzipped as /events sends it.
func BenchmarkPageWeight(b *testing.B) {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		s.Update(statusTopic(fmt.Sprintf("sim-%05d", i)), simStatus(i, "1.0.0"))
	}
	var gz, raw int64
	for _, name := range []string{"index.html", "app.js", "app.css"} {
		r, _ := assets.ReadFile("assets/" + name)
		raw += int64(len(r))
	}
	ts := newTestHTTP(b, s)
	for i := 0; i < b.N; i++ {
		gz = 0
		for _, p := range []string{"/", "/app.js", "/app.css", "/api/session"} {
			req, _ := http.NewRequest("GET", ts+p, nil)
			req.Header.Set("Accept-Encoding", "gzip")
			res, err := http.DefaultTransport.RoundTrip(req) // no transparent decompression
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, res.Body)
			res.Body.Close()
			gz += n
		}
	}
	s.mu.Lock()
	snap := s.snapshot(time.Now())
	s.mu.Unlock()
	zw := &countWriter{}
	z, _ := gzip.NewWriterLevel(zw, gzip.BestSpeed) // as /events sends it
	z.Write(snap)
	z.Close()
	b.ReportMetric(float64(gz), "page-bytes-gzip")
	b.ReportMetric(float64(raw), "page-bytes-raw")
	b.ReportMetric(float64(len(snap)), "snapshot-1000-bytes")
	b.ReportMetric(float64(zw.n), "snapshot-1000-bytes-gzip")
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func newTestHTTP(b *testing.B, s *Server) string {
	ln, err := listenLoopback()
	if err != nil {
		b.Fatal(err)
	}
	s.opts.Listen = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ctx, ln, nil) }()
	b.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String()
}

// BenchmarkFirstRender measures, in a real Chromium, the time from
// navigation start to the first full render of the fleet table
// (window.edgefleetFirstRender), with devices published as retained
// statuses to a real broker: 10 devices (the baseline) and 1,000.
func BenchmarkFirstRender(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			ctx := testkit.Browser(b, "the first-render benchmark", 1440, 1000)
			l := startLive(b, Options{})
			for i := 0; i < n; i++ {
				l.publish(b, statusTopic(fmt.Sprintf("sim-%05d", i)), simStatus(i, "1.0.0"))
			}
			testkit.Eventually(b, "the dashboard holds every device", func() bool {
				l.srv.mu.Lock()
				defer l.srv.mu.Unlock()
				return len(l.srv.st.sortedIDs()) == n
			})
			var total float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, cancel := context.WithTimeout(ctx, time.Minute)
				err := chromedp.Do(c, chromedp.Navigate(l.url+fmt.Sprintf("?%d", i)))
				if err == nil {
					_, err = chromedp.Run(c, chromedp.Poll[bool](fmt.Sprintf(`document.body.dataset.rendered === "%d"`, n), chromedp.WithPollingInterval(5*time.Millisecond)))
				}
				var ms float64
				if err == nil {
					ms, err = chromedp.Run(c, chromedp.Evaluate[float64](`window.edgefleetFirstRender`))
				}
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				total += ms
			}
			b.ReportMetric(total/float64(b.N), "ms-to-first-render")
		})
	}
}

// BenchmarkMemory10k reports the heap the dashboard holds for 10,000
// devices (status, presence, history, cached rows), next to what
// fleet.FleetView (`edgefleet status --watch`) holds for the same
// messages: the baseline.
func BenchmarkMemory10k(b *testing.B) {
	const n = 10_000
	msgs := make([][2][]byte, 0, 2*n)
	for i := 0; i < n; i++ {
		msgs = append(msgs, [2][]byte{[]byte(statusTopic(fmt.Sprintf("sim-%05d", i))), simStatus(i, "1.0.0")})
		t, p := presence(i)
		msgs = append(msgs, [2][]byte{[]byte(t), p})
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var dash, view, snapBytes float64
	for i := 0; i < b.N; i++ {
		before := heap()
		s, _ := New(Options{})
		for _, m := range msgs {
			if err := s.Update(string(m[0]), m[1]); err != nil {
				b.Fatal(err)
			}
		}
		// Rows are cached once sent: count them in.
		s.mu.Lock()
		snap := s.snapshot(time.Now())
		s.mu.Unlock()
		snapBytes = float64(len(snap))
		snap = nil
		dash = float64(heap() - before)
		runtime.KeepAlive(s)

		before = heap()
		v := fleet.NewFleetView()
		for _, m := range msgs {
			v.Update(string(m[0]), m[1])
		}
		view = float64(heap() - before)
		runtime.KeepAlive(v)
	}
	b.ReportMetric(dash/(1<<20), "dashboard-MiB")
	b.ReportMetric(view/(1<<20), "fleetview-MiB")
	b.ReportMetric(dash/n, "dashboard-B/device")
	b.ReportMetric(snapBytes/(1<<20), "snapshot-MiB")
}

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
