package main

// The dashboard end to end (issue 13): `edgefleet broker` with its
// rollout driver, real edgefleet-agent processes, `edgefleet dashboard`
// run as the CLI runs it, and a real headless Chromium driving the page.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

const dashDevices = 6

func browserDo(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func browserEval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

func browserWait(t *testing.T, ctx context.Context, what, cond string, timeout time.Duration) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(c, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(timeout))); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// screenshot writes the page to the test's artifact directory (kept with
// go test -artifacts) and, when $EDGEFLEET_DASHBOARD_SHOTS names a
// directory, there too (docs/dashboard.png is made that way).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	for _, dir := range []string{t.ArtifactDir(), os.Getenv("EDGEFLEET_DASHBOARD_SHOTS")} {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(png))
	}
}

// TestDashboardE2E: the page shows every device; a rollout changes rows
// live; hostile device text renders inert; pause, resume and abort from
// the page act as the CLI does; an action without the CSRF token is
// refused.
func TestDashboardE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED (-short): real agents and a real Chromium")
	}
	ctx := testkit.Browser(t, "the dashboard end-to-end test", 1440, 1000)
	port := testkit.FreePort(t)
	runInBackground(t, "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", t.TempDir())
	f := newRFleet(t, fmt.Sprintf("tcp://127.0.0.1:%d", port))
	for i := 0; i < dashDevices; i++ {
		f.start(fmt.Sprintf("dev-%02d", i), map[string]string{"site": []string{"berlin", "paris"}[i%2], "hw": "rev2"})
	}
	f.cli(0, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", f.bundle("1.0.0", 1, false))
	testkit.Eventually(t, "6 devices commit 1.0.0", func() bool { return f.view.Converged("hello", "1.0.0", dashDevices, stateCommitted) })

	// A hostile device (on another channel, so no rollout selects it).
	hostile := fmt.Sprintf(`{"schema":1,"device":"zz-evil","channel":"lab","cpu":"<img src=x onerror=window.__pwned=1>","time":%q,"online":true,`+
		`"apps":[{"app":"hello","version":"1.0.0\u202etxt.exe","state":"failed","last_error":"<script>window.__pwned=2</script>\u001b[2J\u001b[31mred \u202eevil %s"}]}`,
		time.Now().UTC().Format(time.RFC3339Nano), strings.Repeat("long ", 150))
	evilTopic, _ := protocol.StatusTopic("zz-evil")
	if tok := f.op.Publish(evilTopic, 1, true, []byte(hostile)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	dport := testkit.FreePort(t)
	out := runInBackground(t, "dashboard", "--broker", f.url, "--listen", fmt.Sprintf("127.0.0.1:%d", dport))
	page := fmt.Sprintf("http://127.0.0.1:%d/", dport)
	testkit.Eventually(t, "the dashboard serves "+page, func() bool { return strings.Contains(out.String(), page) })

	browserDo(t, ctx, "open the fleet page", chromedp.Navigate(page))
	browserWait(t, ctx, "every device on the page", `document.querySelectorAll('#fleet tbody tr').length === 7`, 20*time.Second)
	for i := 0; i < dashDevices; i++ {
		id := fmt.Sprintf("dev-%02d", i)
		row := browserEval[string](t, ctx, fmt.Sprintf(`document.querySelector('#fleet tr[data-id=%q]').textContent`, id))
		if !strings.Contains(row, "1.0.0") || !strings.Contains(row, "committed") {
			t.Errorf("row of %s: %q, want 1.0.0 committed", id, row)
		}
	}
	inert := browserEval[map[string]any](t, ctx, `({pwned: window.__pwned || 0, scripts: document.scripts.length, imgs: document.images.length,
		err: document.querySelector('#fleet tr[data-id="zz-evil"] td.err').textContent})`)
	if inert["pwned"].(float64) != 0 || inert["scripts"].(float64) != 1 || inert["imgs"].(float64) != 0 ||
		!strings.Contains(inert["err"].(string), "<script>") || strings.ContainsAny(inert["err"].(string), "\x1b\u202e") {
		t.Errorf("hostile status did not render inert: %v", inert)
	}

	// A rollout: wave 1 (one device) installs, then a long bake.
	browserEval[bool](t, ctx, `window.__same = true`)
	f.cli(0, "rollout", "start", "--broker", f.url, "--pub", f.pubPath, "--channel", "stable", "--quiet",
		"--waves", "1,100%", "--max-failures", "10%", "--min-executed", "1", "--bake", "10m", "--device-timeout", "2m", f.bundle("2.0.0", 2, false))
	r := f.waitRollout("wave 1 of 2.0.0 is done", func(r *protocol.Rollout) bool { return r.Counts.Done == 1 })
	browserWait(t, ctx, "a row to show 2.0.0 committed, live", `[...document.querySelectorAll('#fleet tbody tr')].some(tr => tr.textContent.includes('2.0.0') && tr.textContent.includes('committed'))`, 20*time.Second)
	if !browserEval[bool](t, ctx, `window.__same === true`) {
		t.Fatal("the page reloaded; rows must change live")
	}
	browserWait(t, ctx, "the version counts", `document.querySelector('#counts').textContent.includes('hello 2.0.0')`, 10*time.Second)
	screenshot(t, ctx, "dashboard-fleet.png")

	browserDo(t, ctx, "open the rollouts page", chromedp.Navigate(page+"#/rollouts"))
	card := fmt.Sprintf(`#rollouts article[data-id=%q]`, r.ID)
	browserWait(t, ctx, "the rollout card", fmt.Sprintf(`!!document.querySelector('%s button[data-action="pause"]')`, card), 10*time.Second)
	screenshot(t, ctx, "dashboard-rollout.png")

	// Without the token, or from another site: refused, nothing changes.
	for _, hdr := range []map[string]string{{}, {"Origin": "http://evil.example", "X-CSRF-Token": "0"}} {
		req, _ := http.NewRequest("POST", page+"api/rollouts/pause", strings.NewReader(`{"rollout":"`+r.ID+`"}`))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Fatalf("POST pause with %v: %d %s, want 403", hdr, res.StatusCode, body)
		}
	}
	if got := f.rollout(); got.State != protocol.RolloutRunning {
		t.Fatalf("a refused request changed the rollout: %s", got.State)
	}

	// Pause from the page, with its confirmation: as the CLI would.
	browserDo(t, ctx, "pause from the page", chromedp.Click(chromedp.CSS(card+` button[data-action="pause"]`)))
	browserWait(t, ctx, "the confirmation", `document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent.includes('Pause rollout')`, 5*time.Second)
	browserDo(t, ctx, "confirm", chromedp.Click(chromedp.CSS(`#confirm-yes`)))
	r = f.waitRollout("the rollout paused", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutPaused })
	if !strings.Contains(r.Reason, "paused by local operator (dashboard)") || !strings.Contains(r.Reason, "edgefleet rollout resume "+r.ID) {
		t.Errorf("reason of a pause from the page: %q", r.Reason)
	}
	browserWait(t, ctx, "the card to say PAUSED", fmt.Sprintf(`document.querySelector('%s').textContent.includes('PAUSED')`, card), 10*time.Second)
	time.Sleep(2 * time.Second)
	if got := f.touchedBy("2.0.0"); len(got) != 1 {
		t.Fatalf("devices that saw 2.0.0 while paused after a wave of 1: %v", got)
	}
	st := f.cli(0, "rollout", "status", "--broker", f.url, r.ID)
	if !strings.Contains(st, "PAUSED") {
		t.Errorf("the CLI does not see the page's pause:\n%s", st)
	}

	// Resume, then abort, from the page.
	browserDo(t, ctx, "resume from the page", chromedp.Click(chromedp.CSS(card+` button[data-action="resume"]`)), chromedp.Click(chromedp.CSS(`#confirm-yes`)))
	f.waitRollout("the rollout resumed", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutRunning })
	browserWait(t, ctx, "the abort button", fmt.Sprintf(`!!document.querySelector('%s button[data-action="abort"]') && document.querySelector('%s').textContent.includes('RUNNING')`, card, card), 10*time.Second)
	browserDo(t, ctx, "abort from the page", chromedp.Click(chromedp.CSS(card+` button[data-action="abort"]`)), chromedp.Click(chromedp.CSS(`#confirm-yes`)))
	r = f.waitRollout("the rollout aborted", func(r *protocol.Rollout) bool { return r.State == protocol.RolloutAborted })
	browserWait(t, ctx, "the card to say ABORTED without buttons", fmt.Sprintf(`document.querySelector('%s').textContent.includes('ABORTED') && !document.querySelector('%s button')`, card, card), 10*time.Second)
	if f.retainedCandidates() != 0 {
		t.Errorf("an abort from the page left candidates on the broker")
	}
}

// retainedCandidates counts the rollout candidates the broker holds.
func (f *rfleet) retainedCandidates() int {
	n := 0
	for _, topic := range f.retained() {
		if tp, err := protocol.ParseTopic(topic); err == nil && tp.Kind == protocol.KindCandidate {
			n++
		}
	}
	return n
}

// TestDashboardReconnects: the broker goes away and comes back; the
// dashboard says so, reconnects by itself and reads the fleet again.
func TestDashboardReconnects(t *testing.T) {
	port := testkit.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	url := "tcp://" + addr
	data := t.TempDir()
	startBroker := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		out := &testkit.Buffer{}
		go func() {
			done <- run(ctx, &cliEnv{stdin: strings.NewReader(""), stdout: out, stderr: out, getenv: func(string) string { return "" }},
				[]string{"broker", "--listen", addr, "--data", data, "--rollout-driver=false"})
		}()
		testkit.Eventually(t, "the broker listens", func() bool { return strings.Contains(out.String(), url) })
		return func() { cancel(); <-done }
	}
	stop := startBroker()
	publish := func(id, version string) {
		t.Helper()
		c, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Disconnect(100)
		s := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: id, Time: time.Now().UTC(), Online: true,
			Apps: []protocol.AppReport{{App: "hello", Version: version, State: stateCommitted}}}
		b, _ := s.Marshal()
		topic, _ := protocol.StatusTopic(id)
		if tok := c.Publish(topic, 1, true, b); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	publish("dev-a", "1.0.0")
	dport := testkit.FreePort(t)
	page := fmt.Sprintf("http://127.0.0.1:%d/", dport)
	out := runInBackground(t, "dashboard", "--broker", url, "--listen", fmt.Sprintf("127.0.0.1:%d", dport), "--read-only")
	type state struct {
		Devices []struct {
			ID     string
			Status protocol.DeviceStatus
		}
		Connection struct{ Connected bool }
	}
	get := func() (s state) {
		res, err := http.Get(page + "api/state")
		if err != nil {
			return s
		}
		defer res.Body.Close()
		json.NewDecoder(res.Body).Decode(&s)
		return s
	}
	testkit.Eventually(t, "the dashboard shows dev-a", func() bool { s := get(); return len(s.Devices) == 1 && s.Connection.Connected })
	stop()
	testkit.Eventually(t, "the dashboard says the broker is gone", func() bool { return !get().Connection.Connected })
	if s := get(); len(s.Devices) != 1 {
		t.Errorf("the dashboard forgot the fleet while the broker was away: %+v", s.Devices)
	}
	stop = startBroker()
	defer stop()
	publish("dev-b", "2.0.0")
	testkit.Eventually(t, "the dashboard reconnects and shows dev-a and dev-b", func() bool {
		s := get()
		return s.Connection.Connected && len(s.Devices) == 2
	})
	if !strings.Contains(out.String(), "reconnected to the broker") || !strings.Contains(out.String(), "lost the broker connection") {
		t.Errorf("the dashboard did not say it lost and regained the broker:\n%s", out)
	}
}
