package dashboard

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// liveDashboard is a dashboard fed by a real embedded broker, and an
// operator connection that publishes to it.
type liveDashboard struct {
	srv *Server
	url string // the page
	pub paho.Client
}

func startLive(t testing.TB, o Options) *liveDashboard {
	t.Helper()
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	feed, err := fleet.Connect(ctx, fleet.ClientOptions{Broker: b.URL()})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := fleet.Connect(ctx, fleet.ClientOptions{Broker: b.URL()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if o.Tick == 0 {
		o.Tick = 100 * time.Millisecond
	}
	o.Listen = ln.Addr().String()
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Resync(func() error {
		return fleet.Subscribe(ctx, feed, Filters, func(topic string, p []byte) { srv.Update(topic, p) })
	}); err != nil {
		t.Fatal(err)
	}
	srv.SetConnection(b.URL(), true, nil)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
		feed.Disconnect(100)
		pub.Disconnect(100)
	})
	return &liveDashboard{srv: srv, url: "http://" + ln.Addr().String() + "/", pub: pub}
}

func (l *liveDashboard) publish(t testing.TB, topic string, payload []byte) {
	t.Helper()
	tok := l.pub.Publish(topic, 1, true, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func run(t testing.TB, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](t testing.TB, ctx context.Context, js string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// poll waits until the JavaScript condition holds.
func poll(t testing.TB, ctx context.Context, what, cond string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	if _, err := chromedp.Run(c, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("waiting for %s (%s): %v", what, cond, err)
	}
}

// TestBrowserHostileStatusRendersInert: a device status carrying markup,
// terminal escapes, bidi overrides and a long error reaches the page as
// text only; a later publish changes the row without a reload.
func TestBrowserHostileStatusRendersInert(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED (-short): drives a real Chromium")
	}
	ctx := testkit.Browser(t, "the dashboard browser test", 1400, 900)
	l := startLive(t, Options{})
	l.publish(t, statusTopic("dev-ok"), status("dev-ok", protocol.AppReport{App: "hello", Version: "1.0.0", State: "committed"}))
	long := strings.Repeat("x", 900) + "END"
	hostile := fmt.Sprintf(`{"schema":1,"device":"dev-evil","profile":"rpi3","cpu":"<img src=x onerror=window.__pwned=1>","time":%q,"online":true,`+
		`"apps":[{"app":"hello","version":"1.0.0\u202egpj.exe","state":"failed","last_error":"<script>window.__pwned=2</script>\u001b[31mred\u001b[0m \u202eevil\u202c %s"}]}`,
		time.Now().UTC().Format(time.RFC3339Nano), long)
	l.publish(t, statusTopic("dev-evil"), []byte(hostile))

	run(t, ctx, "open the fleet page", chromedp.Navigate(l.url))
	poll(t, ctx, "both devices in the table", `document.querySelectorAll('#fleet tbody tr').length === 2`)
	got := eval[map[string]any](t, ctx, `(() => {
		const tr = document.querySelector('#fleet tbody tr[data-id="dev-evil"]');
		return {
			pwned: window.__pwned === undefined ? 0 : window.__pwned,
			scripts: document.scripts.length,
			imgs: document.images.length,
			err: tr.querySelector('td.err').textContent,
			cpu: tr.children[2].textContent,
			version: tr.children[4].textContent,
			clip: tr.querySelectorAll('td.err button.clip').length,
		};
	})()`)
	if got["pwned"].(float64) != 0 || got["scripts"].(float64) != 1 || got["imgs"].(float64) != 0 {
		t.Fatalf("device text became markup: %v", got)
	}
	errText, _ := got["err"].(string)
	if !strings.Contains(errText, "<script>window.__pwned=2</script>") || !strings.Contains(got["cpu"].(string), "<img src=x") {
		t.Errorf("markup in device text is not shown as text: err %q cpu %q", errText, got["cpu"])
	}
	if strings.ContainsAny(errText+got["version"].(string), "\x1b\u202e\u202c") {
		t.Errorf("escape or bidi characters reached the page raw: %q %q", errText, got["version"])
	}
	if strings.Contains(errText, "END") || got["clip"].(float64) != 1 {
		t.Errorf("a %d-character error is not clipped with a 'show all' button: %q", len(long), errText)
	}
	// The page's own defence, for text that did not pass protocol.CleanText.
	if v := eval[string](t, ctx, `visible("a\u001b[31m\u202eb\u0085")`); v != "a␛[31m⟦U+202E⟧b\u2426" {
		t.Errorf("visible() = %q", v)
	}
	run(t, ctx, "show the whole error", chromedp.Click(chromedp.CSS(`#fleet tr[data-id="dev-evil"] td.err button.clip`)))
	if whole := eval[string](t, ctx, `document.querySelector('#fleet tr[data-id="dev-evil"] td.err').textContent`); !strings.Contains(whole, "END") {
		t.Errorf("'show all' does not show the whole error: %q", whole)
	}

	// Live: a new status changes the row; the page is not reloaded.
	eval[bool](t, ctx, `window.__same = true`)
	l.publish(t, statusTopic("dev-ok"), status("dev-ok", protocol.AppReport{App: "hello", Version: "1.1.0", State: "downloading", Target: "1.1.0",
		Progress: &protocol.ProgressReport{Step: "download", Done: 50, Total: 100}}))
	poll(t, ctx, "the row of dev-ok to show 1.1.0", `document.querySelector('#fleet tr[data-id="dev-ok"]').textContent.includes('download 50%')`)
	if !eval[bool](t, ctx, `window.__same === true`) {
		t.Fatal("the page reloaded")
	}
	// How releases reached devices: deltas taken and fallen back.
	l.publish(t, statusTopic("dev-delta"), status("dev-delta", protocol.AppReport{App: "hello", Version: "1.1.0", State: "committed", Delta: protocol.DeltaUsed}))
	l.publish(t, statusTopic("dev-full"), status("dev-full", protocol.AppReport{App: "hello", Version: "1.1.0", State: "committed", Delta: "fallback: the base differs"}))
	poll(t, ctx, "the delta counts", `(() => { const c = document.querySelector('#counts').textContent; return c.includes('took a delta1') && c.includes('delta fell back1'); })()`)
	// Filters: by text, state and label.
	run(t, ctx, "filter", chromedp.SendKeys(chromedp.CSS("#f-text"), "dev-ok"))
	poll(t, ctx, "the text filter", `document.querySelectorAll('#fleet tbody tr').length === 1`)
	// The device page shows the whole error and the history.
	run(t, ctx, "open the device page", chromedp.Navigate(l.url+"#/device/dev-evil"))
	poll(t, ctx, "the device page", `document.querySelector('#dev-apps tbody td.err') && document.querySelector('#dev-apps tbody td.err').textContent.includes('END')`)
	if n := eval[float64](t, ctx, `document.querySelectorAll('#dev-history tbody tr').length`); n < 1 {
		t.Errorf("the device page shows no history")
	}
	// Read-only (this dashboard has no way to act): a rollout shows no
	// buttons, and the header says so.
	now := time.Now().UTC()
	ro := &protocol.Rollout{Schema: protocol.MQTTSchemaVersion, ID: "hello-2-abcd", Channel: "stable", App: "hello", Version: "2.0.0", Sequence: 2,
		Profiles: []string{"rpi3"}, Waves: []protocol.Wave{{Count: 1}, {Percent: 100}}, MaxFailures: 0.1, MinExecuted: 1, State: protocol.RolloutRunning,
		Cut: 1000, Cuts: []uint64{1000}, WaveStarted: []time.Time{now}, Created: now, Updated: now, Revision: 1,
		Counts: protocol.RolloutCounts{Selected: 2, Members: 1, Pending: 1}, Reason: "wave 1 of 2 started: 1 of 2 selected devices"}
	msg, err := ro.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := protocol.RolloutTopic("stable", "hello")
	l.publish(t, rt, msg)
	run(t, ctx, "open the rollouts page", chromedp.Navigate(l.url+"#/rollouts"))
	poll(t, ctx, "the rollout card", `!!document.querySelector('#rollouts article[data-id="hello-2-abcd"]')`)
	if n := eval[float64](t, ctx, `document.querySelectorAll('#rollouts button').length`); n != 0 {
		t.Errorf("a read-only dashboard shows %v action buttons", n)
	}
	if who := eval[string](t, ctx, `document.querySelector('#who').textContent`); !strings.Contains(who, "read-only") {
		t.Errorf("the header of a read-only dashboard says %q", who)
	}
	if dir := os.Getenv("EDGEFLEET_DASHBOARD_SHOTS"); dir != "" {
		shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			os.WriteFile(filepath.Join(dir, "device-hostile.png"), shot, 0o644)
		}
	}
}
