package fleet

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"
)

// This file is the only one that touches mochi-mqtt (pinned v2.7.9, no
// longer actively developed): keep its use thin.

// BrokerOptions configures the embedded broker.
type BrokerOptions struct {
	// Listen is the TCP address. Default "127.0.0.1:1883". Without
	// authentication (Users or ClientCA) only a loopback address is allowed.
	Listen string
	// DataDir holds broker.db (retained messages, so releases survive a
	// restart). Required.
	DataDir string
	// TLSCert and TLSKey enable TLS (PEM files). ClientCA (PEM) makes the
	// broker verify client certificates: the certificate's CN is the
	// client's identity (a device id, or an operator when the certificate's
	// OU is "operator").
	TLSCert, TLSKey, ClientCA string
	// Users is the users file (YAML, bcrypt hashes, roles).
	Users string
	// ACL is the ACL file (YAML); default DefaultACL.
	ACL string
	// MaxPacketSize bounds every MQTT packet. Default 1 MiB + 64 KiB: a
	// default 128 KiB chunk fits easily; raise it for bigger chunks.
	MaxPacketSize uint32
	// SessionExpiry is how long a disconnected persistent session is kept.
	// Default 7 days.
	SessionExpiry time.Duration
	// ConnectTimeout is how long a new connection may take, from accept,
	// to finish the TLS handshake and send its CONNECT packet; then the
	// socket is closed. Default DefaultConnectTimeout (10s). After CONNECT
	// the client's keepalive governs the connection.
	ConnectTimeout time.Duration
	// MaxConcurrentLogins bounds the password checks (bcrypt, tens of
	// milliseconds of CPU each) that run at once, so a flood of logins
	// cannot take the CPU from connected clients; a login that waits
	// longer than ConnectTimeout for its turn is refused. Default: half
	// the CPUs, at least 1.
	MaxConcurrentLogins int
	// Logf receives one line per notable event (auth failures, warnings).
	// Default: discard.
	Logf func(format string, args ...any)
}

// DefaultMaxPacketSize is BrokerOptions.MaxPacketSize's default.
const DefaultMaxPacketSize = 1<<20 + 64<<10

// chunkWriteTimeout bounds the write of one retained chunk: a client that
// reads nothing for that long is disconnected (it reconnects and asks again).
const chunkWriteTimeout = 60 * time.Second

// DefaultConnectTimeout is BrokerOptions.ConnectTimeout's default.
const DefaultConnectTimeout = 10 * time.Second

// Validate checks the options and fills defaults.
func (o *BrokerOptions) Validate() error {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:1883"
	}
	if o.DataDir == "" {
		return errors.New("broker: a data directory is required (--data), so releases survive a restart")
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	if o.MaxPacketSize < 64<<10 {
		return fmt.Errorf("broker: max packet size %d is below 64 KiB, too small for any chunk", o.MaxPacketSize)
	}
	if o.SessionExpiry == 0 {
		o.SessionExpiry = 7 * 24 * time.Hour
	}
	if o.ConnectTimeout < 0 {
		return fmt.Errorf("broker: connect timeout %s is negative; give a duration such as 10s", o.ConnectTimeout)
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxConcurrentLogins < 0 {
		return fmt.Errorf("broker: max concurrent logins %d is negative", o.MaxConcurrentLogins)
	}
	if o.MaxConcurrentLogins == 0 {
		o.MaxConcurrentLogins = max(1, runtime.NumCPU()/2)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return errors.New("broker: --tls-cert and --tls-key go together")
	}
	if o.ClientCA != "" && o.TLSCert == "" {
		return errors.New("broker: --client-ca needs TLS (--tls-cert and --tls-key)")
	}
	if !o.authenticated() {
		host, _, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return fmt.Errorf("broker: listen address %q: %w", o.Listen, err)
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("broker: refusing to listen on %s without authentication: anyone on the network could publish releases; add --users (and --acl) or --client-ca, or listen on 127.0.0.1", o.Listen)
		}
	}
	return nil
}

func (o *BrokerOptions) authenticated() bool { return o.Users != "" || o.ClientCA != "" }

// Broker is a running embedded broker.
type Broker struct {
	srv    *mqtt.Server
	chunks *chunkDelivery
	addr   string
	opts   BrokerOptions
	auth   *authHook
	close  sync.Once
	// internalAddr is the loopback listener of the broker's own clients
	// (the rollout driver), which log in with internalUser and the
	// auth hook's internalSecret, whatever the users file or TLS say.
	internalAddr string
	started      time.Time
}

// internalUser is the identity of the broker's own rollout driver. It
// cannot be in a users file (user names have no '@'), and the internal
// listener accepts nothing else.
const internalUser = "@rollout-driver"

// roleInternal is the internal driver's role: read and write under
// edgefleet/v1/ whatever the ACL file says.
const roleInternal = "internal"

// internalListenerID names the internal listener.
const internalListenerID = "internal"

// StartBroker starts the embedded broker; it serves until Close.
func StartBroker(opts BrokerOptions) (*Broker, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	auth := &authHook{acl: DefaultACL(), logf: opts.Logf, open: !opts.authenticated(),
		logins: make(chan struct{}, opts.MaxConcurrentLogins), loginWait: opts.ConnectTimeout}
	var secret [32]byte
	rand.Read(secret[:])
	auth.internalSecret = []byte(hex.EncodeToString(secret[:]))
	if opts.Users != "" {
		u, err := LoadUsers(opts.Users)
		if err != nil {
			return nil, err
		}
		auth.users = u
		if auth.dummyHash, err = dummyHash(u); err != nil {
			return nil, err
		}
	}
	if opts.ACL != "" {
		a, err := LoadACL(opts.ACL)
		if err != nil {
			return nil, err
		}
		auth.acl = a
	}
	var tlsConf *tls.Config
	if opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("broker: TLS certificate: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if opts.ClientCA != "" {
			pem, err := os.ReadFile(opts.ClientCA)
			if err != nil {
				return nil, fmt.Errorf("broker: client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("broker: client CA %s holds no PEM certificate", opts.ClientCA)
			}
			tlsConf.ClientCAs = pool
			tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
			if opts.Users != "" {
				tlsConf.ClientAuth = tls.VerifyClientCertIfGiven
			}
		}
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("broker: data directory: %w", err)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.MaxPacketSize
	caps.MaximumSessionExpiryInterval = uint32(opts.SessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = 0 // retained releases never expire by age
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       slog.New(slog.NewTextHandler(logfWriter(opts.Logf), &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: brokerLogAttr})),
		// The write threshold: queued packets are gathered up to this
		// much before a write (a buffer made only while packets queue).
		ClientNetWriteBufferSize: 64 << 10,
		// The read buffer is allocated for every client for as long as
		// it is connected (64 KiB was 640 MiB of address space for
		// 10,000 devices that send only small packets); a chunk an
		// operator publishes is read past the buffer in one go anyway.
		ClientNetReadBufferSize: 4 << 10,
	})
	if err := srv.AddHook(auth, nil); err != nil {
		return nil, err
	}
	chunks := &chunkDelivery{srv: srv, writeTimeout: chunkWriteTimeout}
	if err := srv.AddHook(chunks, nil); err != nil {
		return nil, err
	}
	store := &retainedStore{Hook: new(bolt.Hook)}
	if err := srv.AddHook(store, &bolt.Options{
		Path:    filepath.Join(opts.DataDir, "broker.db"),
		Options: &bbolt.Options{Timeout: time.Second},
	}); err != nil {
		return nil, fmt.Errorf("broker: open %s (is another broker using this --data?): %w", filepath.Join(opts.DataDir, "broker.db"), err)
	}
	tcp := &tcpListener{id: "tcp", address: opts.Listen, tlsConf: tlsConf, connectTimeout: opts.ConnectTimeout, logf: opts.Logf, srv: srv}
	if err := srv.AddListener(tcp); err != nil {
		srv.Close()
		return nil, fmt.Errorf("broker: listen on %s: %w", opts.Listen, err)
	}
	internal := &tcpListener{id: internalListenerID, address: "127.0.0.1:0", connectTimeout: opts.ConnectTimeout, logf: opts.Logf, srv: srv}
	if err := srv.AddListener(internal); err != nil {
		srv.Close()
		return nil, fmt.Errorf("broker: internal listener on 127.0.0.1: %w", err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, err
	}
	return &Broker{srv: srv, chunks: chunks, addr: tcp.Address(), opts: opts, auth: auth, internalAddr: internal.Address(), started: time.Now()}, nil
}

// Addr is the listening address (host:port), useful with port 0.
func (b *Broker) Addr() string { return b.addr }

// URL is the address as a client URL (tcp:// or ssl://).
func (b *Broker) URL() string {
	if b.opts.TLSCert != "" {
		return "ssl://" + b.addr
	}
	return "tcp://" + b.addr
}

// InternalClient is how the broker's own clients (the rollout driver)
// connect: a loopback listener that accepts only them, with an identity
// that may read and write under edgefleet/v1/ whatever the users file,
// client certificates or ACL file say.
func (b *Broker) InternalClient() ClientOptions {
	return ClientOptions{Broker: "tcp://" + b.internalAddr, Username: internalUser, Password: string(b.auth.internalSecret)}
}

// Started is when the broker started: a driver presence that says
// online but was written before it is stale (every connection is newer).
func (b *Broker) Started() time.Time { return b.started }

// BytesSent is the number of bytes the broker has written to clients.
func (b *Broker) BytesSent() int64 { return atomic.LoadInt64(&b.srv.Info.BytesSent) }

// Open reports whether the broker runs without authentication.
func (b *Broker) Open() bool { return !b.opts.authenticated() }

// Close disconnects every client (their last wills are sent) and closes the
// store.
func (b *Broker) Close() error {
	b.close.Do(func() { b.srv.Close() })
	return nil
}

// Run serves until ctx is done, then closes.
func (b *Broker) Run(ctx context.Context) error {
	<-ctx.Done()
	return b.Close()
}

// retainedStore persists retained messages only: releases and statuses are
// what must survive a restart; sessions are rebuilt by clients on connect,
// and persisting every QoS 1 in-flight chunk would cost an fsync each.
type retainedStore struct{ *bolt.Hook }

func (h *retainedStore) Provides(b byte) bool {
	return b == mqtt.OnRetainMessage || b == mqtt.StoredRetainedMessages || b == mqtt.OnRetainedExpired
}

// identity is who an authenticated client is.
type identity struct {
	name, role     string
	channels, apps []string // a device's scope (acl_scope.go)
}

// authHook authenticates clients (users file, client certificates) and
// applies the ACL.
type authHook struct {
	mqtt.HookBase
	users map[string]User
	acl   *ACL
	open  bool
	logf  func(string, ...any)
	who   sync.Map // *mqtt.Client → identity
	// dummyHash is compared against for an unknown user, so that every
	// failed login costs one bcrypt comparison and the time of a refusal
	// does not tell which user names exist.
	dummyHash []byte
	// logins holds a token per running password check; loginWait bounds
	// the wait for one.
	logins    chan struct{}
	loginWait time.Duration
	// compares and dummyCompares count bcrypt comparisons (all, and those
	// against dummyHash).
	compares, dummyCompares atomic.Int64
	// internalSecret is the password of internalUser on the internal
	// listener.
	internalSecret []byte
}

// dummyHash returns a bcrypt hash of a random password at the cost most of
// users' hashes have (ties: the higher), so an unknown user's comparison
// costs what a known user's does.
func dummyHash(users map[string]User) ([]byte, error) {
	n := map[int]int{}
	cost := bcrypt.DefaultCost
	for _, u := range users {
		c, err := bcrypt.Cost([]byte(u.PasswordHash))
		if err != nil {
			continue // LoadUsers refused those already
		}
		n[c]++
		if n[c] > n[cost] || n[c] == n[cost] && c > cost {
			cost = c
		}
	}
	var pw [32]byte
	rand.Read(pw[:])
	h, err := bcrypt.GenerateFromPassword([]byte(hex.EncodeToString(pw[:])[:60]), cost)
	if err != nil {
		return nil, fmt.Errorf("broker: make the comparison hash for unknown users: %w", err)
	}
	return h, nil
}

// checkPassword runs exactly one bcrypt comparison for every login,
// against the user's hash or, for an unknown user, the dummy hash, with at
// most cap(h.logins) comparisons at once.
func (h *authHook) checkPassword(name string, password []byte) (User, error) {
	if h.dummyHash == nil {
		return User{}, fmt.Errorf("user %q logged in with a password, but this broker has no users file (--users): it accepts client certificates only", name)
	}
	t := time.NewTimer(h.loginWait)
	defer t.Stop()
	select {
	case h.logins <- struct{}{}:
		defer func() { <-h.logins }()
	case <-t.C:
		return User{}, fmt.Errorf("user %q: %d logins were being checked for %s; refused so that a flood of logins cannot take the broker's CPU (the client retries)", name, cap(h.logins), h.loginWait)
	}
	u, known := h.users[name]
	known = known && name != ""
	hash := h.dummyHash
	if known {
		hash = []byte(u.PasswordHash)
	} else {
		h.dummyCompares.Add(1)
	}
	h.compares.Add(1)
	err := bcrypt.CompareHashAndPassword(hash, password)
	switch {
	case !known:
		return User{}, fmt.Errorf("unknown user %q", name)
	case err != nil:
		return User{}, fmt.Errorf("wrong password for user %q", name)
	}
	return u, nil
}

func (h *authHook) ID() string { return "edgefleet-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnDisconnect
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	id, err := h.authenticate(cl, pk)
	if err != nil {
		h.logf("broker: refused client %q from %s: %v", cl.ID, cl.Net.Remote, err)
		return false
	}
	h.who.Store(cl, id)
	return true
}

func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet) (identity, error) {
	if cl.Net.Listener == internalListenerID {
		if string(pk.Connect.Username) == internalUser && subtle.ConstantTimeCompare(pk.Connect.Password, h.internalSecret) == 1 {
			return identity{name: internalUser, role: roleInternal}, nil
		}
		return identity{}, errors.New("the internal listener accepts only the broker's own rollout driver")
	}
	if h.open {
		return identity{name: cl.ID, role: RoleOperator}, nil
	}
	var id identity
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok && len(tc.ConnectionState().PeerCertificates) > 0 {
		cert := tc.ConnectionState().PeerCertificates[0]
		id = identity{name: cert.Subject.CommonName, role: RoleDevice}
		if ou := cert.Subject.OrganizationalUnit; slices.Contains(ou, RoleOperator) {
			id.role = RoleOperator
		} else if slices.Contains(ou, RolePublisher) || slices.Contains(ou, RoleViewer) {
			id.role = RoleViewer
			if slices.Contains(ou, RolePublisher) {
				id.role = RolePublisher
			}
		} else if !protocol.ValidDeviceID(id.name) {
			// Its status topic would be unreadable to every status view
			// (and "%u" in the ACL would name a topic no device id has).
			return id, fmt.Errorf("the client certificate's CN is not a valid device id (%v): issue the device a certificate whose CN is its device_id", protocol.CheckDeviceID(id.name))
		}
	} else {
		u, err := h.checkPassword(string(pk.Connect.Username), pk.Connect.Password)
		if err != nil {
			return id, err
		}
		id = identity{name: u.Name, role: u.Role, channels: u.Channels, apps: u.Apps}
	}
	if id.role == RoleDevice && cl.ID != id.name {
		return id, fmt.Errorf("device %q must connect with its id as client id, not %q", id.name, cl.ID)
	}
	// mochi publishes a last will without an ACL check: a will on a topic
	// the client may not write (another device's status or desired release,
	// the channel's retained release) would be a write around the ACL.
	if pk.Connect.WillFlag && !h.acl.Allowed(id.role, id.name, pk.Connect.WillTopic, true) {
		return id, fmt.Errorf("%s %q asked for a last will on %q, which it may not write; a device's will must be its own status topic", id.role, id.name, pk.Connect.WillTopic)
	}
	return id, nil
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	v, ok := h.who.Load(cl)
	if !ok {
		return false
	}
	id := v.(identity)
	if h.open {
		return true
	}
	if id.role == roleInternal {
		return strings.HasPrefix(topic, protocol.TopicPrefix)
	}
	why := ""
	if h.acl.Allowed(id.role, id.name, topic, write) {
		ok := true
		if id.role == RoleDevice {
			ok, why = deviceScopeAllows(id.channels, id.apps, topic, write)
		}
		if ok {
			return true
		}
	}
	if why != "" {
		why = ": " + why
	}
	verb := "read"
	if write {
		verb = "write"
	}
	h.logf("broker: denied %s %q to %s %q%s", verb, topic, id.role, id.name, why)
	return false
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	// The will is sent before OnDisconnect, so the identity is still known
	// for its ACL check.
	h.who.Delete(cl)
}

// logfWriter turns slog lines into Logf calls.
type logfWriter func(string, ...any)

func (w logfWriter) Write(p []byte) (int, error) {
	w("broker: %s", bytes.TrimSpace(p))
	return len(p), nil
}

var _ io.Writer = logfWriter(nil)
