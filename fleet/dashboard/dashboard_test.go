package dashboard

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
	"golang.org/x/crypto/bcrypt"
)

func status(id string, apps ...protocol.AppReport) []byte {
	s := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: id, Profile: "rpi3", CPU: "cortex-a53",
		Labels: protocol.Labels{"site": "berlin"}, Channel: "stable", Time: time.Now().UTC(), Online: true, Apps: apps}
	b, err := s.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

func statusTopic(id string) string {
	t, err := protocol.StatusTopic(id)
	if err != nil {
		panic(err)
	}
	return t
}

func TestListenPolicy(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	ops := map[string]fleet.User{"alice": {Name: "alice", PasswordHash: string(hash), Role: fleet.RoleOperator}}
	devs := map[string]fleet.User{"dev-1": {Name: "dev-1", PasswordHash: string(hash), Role: fleet.RoleDevice}}
	for _, c := range []struct {
		o    Options
		want string // "" accepted, else a part of the error
	}{
		{Options{}, ""},
		{Options{Listen: "127.0.0.1:9000"}, ""},
		{Options{Listen: "[::1]:9000"}, ""},
		{Options{Listen: "localhost:9000"}, ""},
		{Options{Listen: "0.0.0.0:8080"}, "not a loopback address"},
		{Options{Listen: ":8080"}, "not a loopback address"},
		{Options{Listen: "192.168.1.10:8080", Users: ops}, "not a loopback address"},
		{Options{Listen: "0.0.0.0:8080", TLSCert: "c.pem", TLSKey: "k.pem"}, "not a loopback address"},
		{Options{Listen: "0.0.0.0:8080", TLSCert: "c.pem", TLSKey: "k.pem", Users: devs}, "no user with role operator"},
		{Options{Listen: "0.0.0.0:8080", TLSCert: "c.pem"}, "both --tls-cert and --tls-key"},
		{Options{Listen: "0.0.0.0:8080", TLSCert: "c.pem", TLSKey: "k.pem", Users: ops}, ""},
		{Options{Listen: "8080"}, "want host:port"},
	} {
		err := c.o.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("listen %q: refused: %v", c.o.Listen, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("listen %q (tls %v, %d users): got %v, want an error saying %q", c.o.Listen, c.o.TLSCert != "", len(c.o.Users), err, c.want)
		}
	}
}

// testServer serves a dashboard over httptest whose listen address is the
// test server's.
func testServer(t *testing.T, o Options) (*Server, *httptest.Server) {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	o.Listen = ts.Listener.Addr().String()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ts.Config.Handler = s.Handler()
	ts.Start()
	t.Cleanup(ts.Close)
	return s, ts
}

func post(t *testing.T, url string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestActionsNeedCSRFTokenAndSameOrigin(t *testing.T) {
	var calls atomic.Int32
	act := func(ctx context.Context, verb, ref, user string) (*protocol.Rollout, error) {
		calls.Add(1)
		return &protocol.Rollout{ID: ref, State: protocol.RolloutPaused, Reason: "paused by " + user}, nil
	}
	s, ts := testServer(t, Options{Act: act})
	url := ts.URL + "/api/rollouts/pause"
	body := `{"rollout":"hello-2-abcd"}`
	origin := "http://" + ts.Listener.Addr().String()
	for _, c := range []struct {
		name string
		hdr  map[string]string
	}{
		{"no token", map[string]string{"Origin": origin}},
		{"a wrong token", map[string]string{"X-CSRF-Token": strings.Repeat("0", 64)}},
		{"another site's origin", map[string]string{"X-CSRF-Token": s.CSRFToken(), "Origin": "http://evil.example"}},
		{"a cross-site fetch", map[string]string{"X-CSRF-Token": s.CSRFToken(), "Sec-Fetch-Site": "cross-site"}},
	} {
		if code, msg := post(t, url, c.hdr, body); code != http.StatusForbidden || !strings.Contains(msg, "refused") {
			t.Errorf("POST with %s: %d %q, want 403 saying it was refused", c.name, code, msg)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("refused requests reached the action %d times", n)
	}
	code, msg := post(t, url, map[string]string{"X-CSRF-Token": s.CSRFToken(), "Origin": origin, "Sec-Fetch-Site": "same-origin"}, body)
	if code != http.StatusOK || calls.Load() != 1 || !strings.Contains(msg, "paused by local operator") {
		t.Fatalf("POST from the page: %d %q, %d calls; want 200 and the action run once", code, msg, calls.Load())
	}
	if code, _ := post(t, url, map[string]string{"X-CSRF-Token": s.CSRFToken()}, `{"rollout":"Bad Id"}`); code != http.StatusBadRequest {
		t.Errorf("POST with a bad rollout id: %d, want 400", code)
	}

	// Read-only: refused even with the token.
	ro, rts := testServer(t, Options{Act: act, ReadOnly: true})
	if code, msg := post(t, rts.URL+"/api/rollouts/abort", map[string]string{"X-CSRF-Token": ro.CSRFToken()}, body); code != http.StatusForbidden || !strings.Contains(msg, "read-only") {
		t.Errorf("POST to a read-only dashboard: %d %q, want 403 read-only", code, msg)
	}
	if calls.Load() != 1 {
		t.Errorf("a read-only dashboard ran an action")
	}
}

func TestHostHeaderChecked(t *testing.T) {
	_, ts := testServer(t, Options{})
	port := ts.Listener.Addr().(interface{ String() string }).String()
	port = port[strings.LastIndexByte(port, ':'):]
	for host, want := range map[string]int{
		"127.0.0.1" + port: 200, "localhost" + port: 200, "LOCALHOST" + port: 200,
		"evil.example" + port: http.StatusMisdirectedRequest, "evil.example": http.StatusMisdirectedRequest,
		"127.0.0.1:1": http.StatusMisdirectedRequest, "10.0.0.1" + port: http.StatusMisdirectedRequest,
	} {
		req, _ := http.NewRequest("GET", ts.URL+"/api/session", nil)
		req.Host = host
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("Host %s: %d, want %d", host, res.StatusCode, want)
		}
	}
}

func TestLoginOperatorsOnly(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	users := map[string]fleet.User{
		"alice": {Name: "alice", PasswordHash: string(hash), Role: fleet.RoleOperator},
		"dev-1": {Name: "dev-1", PasswordHash: string(hash), Role: fleet.RoleDevice},
	}
	_, ts := testServer(t, Options{Users: users})
	for _, c := range []struct {
		user, pass string
		want       int
	}{{"", "", 401}, {"alice", "wrong", 401}, {"dev-1", "secret", 401}, {"bob", "secret", 401}, {"alice", "secret", 200}, {"alice", "secret", 200}} {
		req, _ := http.NewRequest("GET", ts.URL+"/api/session", nil)
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.want {
			t.Errorf("login %q/%q: %d, want %d", c.user, c.pass, res.StatusCode, c.want)
		}
		if c.want == 200 && !strings.Contains(string(b), `"user":"alice"`) {
			t.Errorf("session of alice: %s", b)
		}
	}
}

// The page's code never turns data into markup, and the policy forbids
// inline script: a device's text can only ever be text.
func TestAssetsNeverParseDataAsHTML(t *testing.T) {
	js, _ := assets.ReadFile("assets/app.js")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "createContextualFragment", "DOMParser"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("app.js uses %s: device text must only reach the page through textContent", bad)
		}
	}
	html, _ := assets.ReadFile("assets/index.html")
	if m := regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`).Find(html); m != nil {
		t.Errorf("index.html has inline script %q; the CSP refuses it", m)
	}
	if m := regexp.MustCompile(`\son[a-z]+=`).Find(html); m != nil {
		t.Errorf("index.html has an inline handler %q", m)
	}
	_, ts := testServer(t, Options{})
	res, err := http.Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	csp := res.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q: want default-src 'none', script-src 'self', nothing unsafe", csp)
	}
	if res.Header.Get("X-Frame-Options") != "DENY" || res.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("missing framing or sniffing protection: %v", res.Header)
	}
}

func TestUpdateDropsMalformedAndKeepsTheView(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	good := status("dev-1", protocol.AppReport{App: "hello", Version: "1.0.0", State: "committed"})
	if err := s.Update(statusTopic("dev-1"), good); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string][2]string{
		"not JSON":         {statusTopic("dev-1"), "{"},
		"another device":   {statusTopic("dev-1"), string(status("dev-2"))},
		"unknown field":    {statusTopic("dev-1"), strings.Replace(string(good), `"schema":1`, `"schema":1,"evil":1`, 1)},
		"bad topic":        {"edgefleet/v1/device/../status", string(good)},
		"bad presence":     {"edgefleet/v1/device/dev-1/online", `{"schema":1}`},
		"bad driver":       {protocol.DriverTopic, "[]"},
		"bad assignment":   {"edgefleet/v1/device/dev-1/desired/hello", "x"},
		"wrong schema":     {statusTopic("dev-1"), strings.Replace(string(good), `"schema":1`, `"schema":99`, 1)},
		"huge status":      {statusTopic("dev-1"), `{"schema":1,"device":"dev-1","x":"` + strings.Repeat("a", 1<<20) + `"}`},
		"not a fleet kind": {"edgefleet/v1/chunks/hello/abc/0", "x"},
	} {
		if err := s.Update(m[0], []byte(m[1])); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	var snap struct {
		Devices []Row `json:"devices"`
		Dropped int   `json:"dropped"`
	}
	s.mu.Lock()
	b := s.snapshot(time.Now())
	s.mu.Unlock()
	if err := json.Unmarshal(b, &snap); err != nil {
		t.Fatalf("snapshot is not JSON: %v\n%s", err, b)
	}
	if len(snap.Devices) != 1 || snap.Devices[0].Status.Apps[0].Version != "1.0.0" {
		t.Fatalf("malformed messages changed the view: %+v", snap.Devices)
	}
	if snap.Dropped == 0 {
		t.Errorf("malformed status messages were not counted")
	}
	// A cleared status removes the device.
	if err := s.Update(statusTopic("dev-1"), nil); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	n := len(s.st.sortedIDs())
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("a cleared status left %d devices", n)
	}
}

func TestResyncForgetsWhatWasCleared(t *testing.T) {
	s, _ := New(Options{})
	for _, id := range []string{"a-1", "a-2"} {
		s.Update(statusTopic(id), status(id))
	}
	s.Update("edgefleet/v1/rollout/stable/hello", []byte(`{}`))
	// After a reconnect only a-2 is retained still.
	s.Resync(func() error { return s.Update(statusTopic("a-2"), status("a-2")) })
	s.mu.Lock()
	ids := s.st.sortedIDs()
	held := len(s.st.retained)
	s.mu.Unlock()
	if len(ids) != 1 || ids[0] != "a-2" || held != 0 {
		t.Fatalf("after a resync: devices %v, %d retained messages; want [a-2] and none", ids, held)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	s, _ := New(Options{HistoryPerDevice: 4})
	for i := 0; i < 20; i++ {
		v := "1.0." + string(rune('a'+i))
		s.Update(statusTopic("d"), status("d", protocol.AppReport{App: "hello", Version: v, State: "committed"}))
		s.Update(statusTopic("d"), status("d", protocol.AppReport{App: "hello", Version: v, State: "committed"})) // no change
	}
	s.mu.Lock()
	h := s.st.devices["d"].history
	s.mu.Unlock()
	if len(h) != 4 || h[3].Apps[0].Version != "1.0.t" {
		t.Fatalf("history %+v: want the last 4 changes", h)
	}
}

// FuzzUpdate: no message sequence panics or makes the snapshot invalid.
func FuzzUpdate(f *testing.F) {
	f.Add(statusTopic("dev-1"), string(status("dev-1", protocol.AppReport{App: "hello", Version: "1.0.0", LastError: "<script>x</script>\x1b[2J\u202e"})))
	f.Add("edgefleet/v1/device/dev-1/online", `{"schema":1,"device":"dev-1","online":true,"time":"2026-01-01T00:00:00Z"}`)
	f.Add("edgefleet/v1/rollout/stable/hello", `{"schema":1}`)
	f.Add(protocol.DriverTopic, `{"schema":1,"instance":"x","online":true}`)
	f.Add("edgefleet/v1/device/dev-1/desired/hello", `{}`)
	f.Fuzz(func(t *testing.T, topic, payload string) {
		s, _ := New(Options{})
		s.Update(topic, []byte(payload))
		s.Update(statusTopic("dev-1"), []byte(payload))
		s.mu.Lock()
		b := s.snapshot(time.Now())
		d, _ := s.delta(time.Now(), true)
		s.mu.Unlock()
		if !json.Valid(b) || d != nil && !json.Valid(d) {
			t.Fatalf("invalid JSON after %q %q", topic, payload)
		}
	})
}

// On a network address the dashboard serves HTTPS only, to operators who
// log in; their name is who acts.
func TestHTTPSWithLoginsOnANetworkAddress(t *testing.T) {
	ca := testkit.NewCA(t, t.TempDir(), "dashboard test CA")
	pair := ca.Server("dashboard")
	hash, _ := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	var who atomic.Value
	s, err := New(Options{Listen: "0.0.0.0:0", TLSCert: pair.Cert, TLSKey: pair.Key,
		Users: map[string]fleet.User{"alice": {Name: "alice", PasswordHash: string(hash), Role: fleet.RoleOperator}},
		Act: func(ctx context.Context, verb, ref, user string) (*protocol.Rollout, error) {
			who.Store(user)
			return &protocol.Rollout{ID: ref, State: protocol.RolloutPaused}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.opts.AllowedHosts, "localhost") {
		t.Errorf("allowed hosts %v lack the certificate's DNS name", s.opts.AllowedHosts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func(u string) { urls <- u }) }()
	defer func() { cancel(); <-done }()
	u := <-urls
	if !strings.HasPrefix(u, "https://") {
		t.Fatalf("served %s, want https", u)
	}
	port := u[strings.LastIndexByte(u, ':')+1 : len(u)-1]
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(ca.File)
	pool.AppendCertsFromPEM(pem)
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://127.0.0.1:" + port
	// Plain HTTP to the TLS listener never gets the page.
	if res, err := http.Get("http://127.0.0.1:" + port + "/"); err == nil {
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Fatal("the dashboard answered plain HTTP on a network address")
		}
	}
	req := func(method, path, user string, hdr map[string]string) *http.Response {
		r, _ := http.NewRequest(method, base+path, strings.NewReader(`{"rollout":"hello-2-abcd"}`))
		if user != "" {
			r.SetBasicAuth(user, "secret")
		}
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		res, err := cl.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	// The certificate's name is a host the dashboard serves; another is not.
	for host, want := range map[string]int{"localhost:" + port: 401, "evil.example:" + port: http.StatusMisdirectedRequest} {
		r, _ := http.NewRequest("GET", base+"/", nil)
		r.Host = host
		res, err := cl.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("Host %s: %d, want %d", host, res.StatusCode, want)
		}
	}
	if res := req("GET", "/", "", nil); res.StatusCode != http.StatusUnauthorized || !strings.Contains(res.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("no login: %d %v, want 401 asking for basic auth", res.StatusCode, res.Header)
	}
	if res := req("GET", "/", "alice", nil); res.StatusCode != 200 || res.Header.Get("Strict-Transport-Security") == "" {
		t.Fatalf("alice: %d, HSTS %q", res.StatusCode, res.Header.Get("Strict-Transport-Security"))
	}
	if res := req("POST", "/api/rollouts/pause", "alice", map[string]string{"X-CSRF-Token": s.CSRFToken(), "Origin": base}); res.StatusCode != 200 || who.Load() != "alice" {
		t.Fatalf("pause by alice: %d, acted as %v", res.StatusCode, who.Load())
	}
}

// A page that does not read its events is dropped, not buffered for: it
// reconnects and gets a fresh snapshot.
func TestSlowPageIsDropped(t *testing.T) {
	s, _ := New(Options{Tick: 10 * time.Millisecond})
	slow := &client{ch: make(chan []byte, 1), gone: make(chan struct{})}
	s.mu.Lock()
	s.subs[slow] = true
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.pushLoop(ctx)
	for i := 0; i < 10; i++ {
		s.Update(statusTopic("d"), status("d", protocol.AppReport{App: "hello", Version: fmt.Sprintf("1.0.%d", i)}))
		time.Sleep(30 * time.Millisecond)
	}
	select {
	case <-slow.gone:
	case <-time.After(10 * time.Second):
		t.Fatal("a page that reads nothing was not dropped")
	}
	s.mu.Lock()
	n := len(s.subs)
	s.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d pages still registered", n)
	}
}

// A flood of malformed messages on distinct topics is counted, not
// remembered without bound.
func TestMalformedFloodIsBounded(t *testing.T) {
	s, _ := New(Options{})
	for i := 0; i < maxMalformedKept+50; i++ {
		s.Update(statusTopic(fmt.Sprintf("bad-%d", i)), []byte("garbage"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.st.malformed) != maxMalformedKept || s.st.dropped() != maxMalformedKept+50 {
		t.Fatalf("kept %d, counted %d; want %d kept and every one counted", len(s.st.malformed), s.st.dropped(), maxMalformedKept)
	}
}
