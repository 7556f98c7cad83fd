package dashboard

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
	"golang.org/x/crypto/bcrypt"
)

// ErrReadOnly is returned (as HTTP 403) for actions on a read-only
// dashboard.
var ErrReadOnly = errors.New("this dashboard is read-only (--read-only, or started without a way to act): use 'edgefleet rollout pause|resume|abort' or a dashboard started without --read-only")

// Options configure a Server. The zero value serves on 127.0.0.1:8080,
// read-only.
type Options struct {
	// Listen is the TCP address. Default "127.0.0.1:8080". A non-loopback
	// address (or one without a host, which listens on every interface)
	// needs TLSCert, TLSKey and Users.
	Listen string
	// TLSCert and TLSKey (PEM) serve HTTPS.
	TLSCert, TLSKey string
	// Users are the logins (fleet.LoadUsers); only operators may log in
	// (HTTP basic authentication). None: no login (loopback only).
	Users map[string]fleet.User
	// ReadOnly hides and refuses actions.
	ReadOnly bool
	// Act performs a rollout action (verb pause, resume or abort) on the
	// rollout ref for user, as `edgefleet rollout VERB` does. Nil: the
	// dashboard is read-only.
	Act func(ctx context.Context, verb, ref, user string) (*protocol.Rollout, error)
	// Keyring, when set, verifies every release's signature for the
	// releases page.
	Keyring *protocol.Keyring
	// AllowedHosts are extra Host header values accepted (a name the
	// dashboard is reached by, behind a proxy); the listen address,
	// localhost names and the TLS certificate's DNS names always are.
	AllowedHosts []string
	// Tick is how often changes are pushed to pages, at most. Default
	// 500ms.
	Tick time.Duration
	// MaxClients bounds the pages connected at once. Default 64.
	MaxClients int
	// HistoryPerDevice bounds each device's history. Default 32.
	HistoryPerDevice int
	// TimelinePoints bounds the versions-over-time chart. Default 2000.
	TimelinePoints int
	// StaleAfter: a device whose last contact is older shows offline
	// (as `edgefleet status`). Default fleet.DefaultStaleAfter.
	StaleAfter time.Duration
	// Logf logs (default: nothing).
	Logf func(format string, a ...any)
}

// Validate checks the options and fills defaults. It refuses to serve a
// network without TLS and operator logins.
func (o *Options) Validate() error {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8080"
	}
	host, _, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port, e.g. 127.0.0.1:8080: %w", o.Listen, err)
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return errors.New("HTTPS needs both --tls-cert and --tls-key")
	}
	operators := 0
	for _, u := range o.Users {
		if u.Role == fleet.RoleOperator {
			operators++
		}
	}
	if len(o.Users) > 0 && operators == 0 {
		return errors.New("the users file has no user with role operator: only operators may log in to the dashboard")
	}
	if !loopback(host) && (o.TLSCert == "" || operators == 0) {
		return fmt.Errorf("refusing to serve the fleet on %s, which is not a loopback address, without HTTPS and logins: "+
			"give --tls-cert and --tls-key, and --users with at least one operator; or listen on 127.0.0.1 (the default) and reach it through an SSH tunnel (ssh -L 8080:127.0.0.1:8080 host)", o.Listen)
	}
	if o.Tick <= 0 {
		o.Tick = 500 * time.Millisecond
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 64
	}
	if o.HistoryPerDevice <= 0 {
		o.HistoryPerDevice = 32
	}
	if o.TimelinePoints <= 1 {
		o.TimelinePoints = 2000
	}
	if o.StaleAfter == 0 {
		o.StaleAfter = fleet.DefaultStaleAfter
	}
	if o.Act == nil {
		o.ReadOnly = true
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// loopback reports whether a listen host is a loopback address only.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is the dashboard: the fleet model (fed by Update) and the HTTP
// handler.
type Server struct {
	opts      Options
	csrf      string
	mu        sync.Mutex
	st        *state
	subs      map[*client]bool
	conn      connState
	authMu    sync.Mutex
	authCache map[[32]byte]string // sha256(user, password) → user, for logins already checked
	dummyHash []byte
	started   time.Time
}

// connState is the broker connection as pages see it.
type connState struct {
	Connected bool      `json:"connected"`
	Broker    string    `json:"broker"`
	Error     string    `json:"error,omitempty"`
	Since     time.Time `json:"since"`
}

// New checks o and returns a server with an empty fleet.
func New(o Options) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("make the CSRF token: %w", err)
	}
	s := &Server{opts: o, csrf: hex.EncodeToString(b[:]), subs: map[*client]bool{}, authCache: map[[32]byte]string{}, started: time.Now()}
	s.st = newState(&s.opts)
	if o.TLSCert != "" {
		// The names the certificate is for are names the dashboard is
		// reached by.
		pair, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("dashboard TLS certificate: %w", err)
		}
		if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err == nil {
			s.opts.AllowedHosts = append(s.opts.AllowedHosts, leaf.DNSNames...)
		}
	}
	if len(o.Users) > 0 {
		h, err := bcrypt.GenerateFromPassword(b[:16], bcrypt.DefaultCost)
		if err != nil {
			return nil, fmt.Errorf("make the comparison hash for unknown users: %w", err)
		}
		s.dummyHash = h
	}
	return s, nil
}

// Update applies one MQTT message from the Filters subscription (it runs
// on the MQTT delivery goroutine and does not block on pages). A
// malformed message is dropped and returned for the caller to log.
func (s *Server) Update(topic string, payload []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.update(topic, payload, time.Now())
}

// Resync runs subscribe (which delivers every retained message through
// Update again, after a reconnect) and then forgets what was not
// delivered again: it was cleared while the dashboard was away.
func (s *Server) Resync(subscribe func() error) error {
	s.mu.Lock()
	s.st.beginResync()
	s.mu.Unlock()
	if err := subscribe(); err != nil {
		return err
	}
	s.mu.Lock()
	s.st.endResync()
	s.mu.Unlock()
	return nil
}

// SetConnection tells pages whether the broker connection is up (err
// says why not).
func (s *Server) SetConnection(broker string, connected bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn = connState{Connected: connected, Broker: broker, Since: time.Now().UTC()}
	if err != nil {
		s.conn.Error = err.Error()
	}
	s.st.catalogDirty = true // pushes the connection state with the next event
}

// CSRFToken is the token actions need in the X-CSRF-Token header (tests).
func (s *Server) CSRFToken() string { return s.csrf }

// Run listens on Options.Listen and serves until ctx ends; ready, when
// not nil, is called with the page's URL once it listens.
func (s *Server) Run(ctx context.Context, ready func(url string)) error {
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.opts.Listen, err)
	}
	return s.Serve(ctx, ln, ready)
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener, ready func(url string)) error {
	scheme := "http"
	if s.opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.TLSCert, s.opts.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("dashboard TLS certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	go s.pushLoop(pctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if ready != nil {
		ready(scheme + "://" + ln.Addr().String() + "/")
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx) // SSE streams end with ctx (BaseContext)
	return nil
}

// Handler is the dashboard's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.asset("index.html"))
	mux.HandleFunc("GET /app.js", s.asset("app.js"))
	mux.HandleFunc("GET /app.css", s.asset("app.css"))
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /api/session", s.session)
	mux.HandleFunc("GET /api/state", s.stateJSON)
	mux.HandleFunc("GET /api/devices/{id}", s.deviceJSON)
	mux.HandleFunc("GET /events", s.events)
	mux.HandleFunc("POST /api/rollouts/{verb}", s.action)
	return s.guard(mux)
}

// guard sets the security headers, checks the Host (DNS rebinding) and
// the login.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if !s.hostAllowed(r.Host) {
			http.Error(w, fmt.Sprintf("host %q is not one this dashboard serves; reach it by its listen address, or add the name with --allow-host", protocol.CleanText(r.Host)), http.StatusMisdirectedRequest)
			return
		}
		user, ok := s.login(r)
		if !ok {
			h.Set("WWW-Authenticate", `Basic realm="edgefleet dashboard", charset="UTF-8"`)
			http.Error(w, "log in as an operator of the users file", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, user)))
	})
}

type userKey struct{}

// hostAllowed accepts the listen address, localhost names with its port,
// and Options.AllowedHosts.
func (s *Server) hostAllowed(host string) bool {
	lhost, lport, _ := net.SplitHostPort(s.opts.Listen)
	h, p, err := net.SplitHostPort(host)
	if err != nil {
		h, p = host, ""
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
		}
	}
	for _, a := range s.opts.AllowedHosts {
		if strings.EqualFold(a, host) || strings.EqualFold(a, h) {
			return true
		}
	}
	if lport != "0" && p != lport && !(p == "" && (lport == "80" || lport == "443")) {
		return false
	}
	switch {
	case strings.EqualFold(h, "localhost"), h == lhost && lhost != "":
		return true
	}
	ip := net.ParseIP(h)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	// Listening on every interface (or a non-loopback address, with
	// logins): any address of this host, never a name.
	return !loopback(lhost)
}

// login checks HTTP basic authentication against Options.Users (only
// operators); without users every request is the local operator.
func (s *Server) login(r *http.Request) (string, bool) {
	if len(s.opts.Users) == 0 {
		return "local operator", true
	}
	name, pass, ok := r.BasicAuth()
	if !ok || name == "" {
		return "", false
	}
	key := sha256.Sum256([]byte(name + "\x00" + pass))
	s.authMu.Lock()
	cached, hit := s.authCache[key]
	s.authMu.Unlock()
	if hit {
		return cached, true
	}
	u, known := s.opts.Users[name]
	if !known || u.Role != fleet.RoleOperator {
		bcrypt.CompareHashAndPassword(s.dummyHash, []byte(pass)) // an unknown name costs what a known one does
		return "", false
	}
	if bcrypt.CompareHashAndPassword([]byte(u.PasswordHash), []byte(pass)) != nil {
		return "", false
	}
	s.authMu.Lock()
	if len(s.authCache) > 256 {
		clear(s.authCache)
	}
	s.authCache[key] = name
	s.authMu.Unlock()
	return name, true
}

func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	user, _ := r.Context().Value(userKey{}).(string)
	writeJSON(w, map[string]any{"csrf": s.csrf, "read_only": s.opts.ReadOnly, "user": user,
		"stale_after_ms": s.opts.StaleAfter.Milliseconds(), "started": s.started.UTC()})
}

// snapshot is the whole view: what a page gets first. Called with s.mu
// held.
func (s *Server) snapshot(now time.Time) []byte {
	var b bytes.Buffer
	b.WriteString(`{"type":"snapshot","now":`)
	writeJSONTo(&b, now.UTC())
	b.WriteString(`,"stale_after_ms":`)
	fmt.Fprint(&b, s.opts.StaleAfter.Milliseconds())
	b.WriteString(`,"devices":[`)
	for i, id := range s.st.sortedIDs() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(s.st.rowJSON(id))
	}
	b.WriteString(`],"catalog":`)
	b.Write(s.st.catalog())
	b.WriteString(`,"timeline":`)
	writeJSONTo(&b, s.st.timeline)
	b.WriteString(`,"malformed":`)
	writeJSONTo(&b, s.st.malformedList())
	fmt.Fprintf(&b, `,"dropped":%d,"connection":`, s.st.dropped())
	writeJSONTo(&b, s.conn)
	b.WriteString("}")
	return b.Bytes()
}

func (s *Server) stateJSON(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b := s.snapshot(time.Now())
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

func (s *Server) deviceJSON(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	d := s.st.devices[id]
	var row json.RawMessage
	var hist []HistoryEntry
	if d != nil {
		row = s.st.rowJSON(id)
		hist = append(hist, d.history...)
	}
	s.mu.Unlock()
	if row == nil {
		http.Error(w, fmt.Sprintf("no device %q reports a status", protocol.CleanText(id)), http.StatusNotFound)
		return
	}
	writeJSON(w, struct {
		Row     json.RawMessage `json:"row"`
		History []HistoryEntry  `json:"history"`
	}{row, hist})
}

// action runs pause, resume or abort after the CSRF and origin checks.
func (s *Server) action(w http.ResponseWriter, r *http.Request) {
	verb := r.PathValue("verb")
	if verb != "pause" && verb != "resume" && verb != "abort" {
		http.Error(w, fmt.Sprintf("unknown action %q: want pause, resume or abort", protocol.CleanText(verb)), http.StatusNotFound)
		return
	}
	if err := s.checkOrigin(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	if s.opts.ReadOnly {
		http.Error(w, ErrReadOnly.Error(), http.StatusForbidden)
		return
	}
	var req struct {
		Rollout string `json:"rollout"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || !protocol.ValidRolloutID(req.Rollout) {
		http.Error(w, `want a JSON body {"rollout":"<rollout id>"}`, http.StatusBadRequest)
		return
	}
	user, _ := r.Context().Value(userKey{}).(string)
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	ro, err := s.opts.Act(ctx, verb, req.Rollout, user)
	if err != nil {
		s.opts.Logf("%s %s by %s: %v", verb, req.Rollout, user, err)
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	s.opts.Logf("%s %s by %s: %s", verb, ro.ID, user, ro.State)
	writeJSON(w, map[string]string{"id": ro.ID, "state": ro.State, "reason": ro.Reason})
}

// checkOrigin refuses a request without the CSRF token, or from another
// site.
func (s *Server) checkOrigin(r *http.Request) error {
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.csrf)) != 1 {
		return errors.New("refused: the request lacks this dashboard's CSRF token (X-CSRF-Token); actions come from the dashboard page only")
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("refused: a cross-site request (Sec-Fetch-Site %s)", protocol.CleanText(site))
	}
	if o := r.Header.Get("Origin"); o != "" {
		scheme := "http://"
		if r.TLS != nil {
			scheme = "https://"
		}
		if o != scheme+r.Host {
			return fmt.Errorf("refused: the request comes from %s, not from this dashboard (%s%s)", protocol.CleanText(o), scheme, protocol.CleanText(r.Host))
		}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

func writeJSONTo(b *bytes.Buffer, v any) {
	out, err := json.Marshal(v)
	if err != nil {
		b.WriteString("null")
		return
	}
	b.Write(out)
}
