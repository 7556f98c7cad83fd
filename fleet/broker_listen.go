package fleet

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// tcpListener is mochi's TCP listener with an accept loop that survives
// errors: mochi's returns on the first failed Accept, so a broker that ran
// out of file descriptors (one per client; a default `ulimit -n` of 1024
// stops it near 1,000 devices) stopped accepting anyone, for good and
// without a word. This one says that the limit was hit and how to raise
// it, backs off, and keeps accepting once descriptors are free again.
type tcpListener struct {
	id, address string
	tlsConf     *tls.Config
	// connectTimeout closes a connection that has not sent its CONNECT in
	// time (mochi reads the CONNECT, and does the TLS handshake, without
	// a deadline).
	connectTimeout time.Duration
	logf           func(string, ...any)
	// srv is the broker whose clients Close disconnects (closeClients).
	srv *mqtt.Server

	mu     sync.Mutex
	ln     net.Listener
	closed bool
	// lastFull is when the fd-limit message was last logged (at most one
	// every fdLimitLogEvery).
	lastFull time.Time
}

const fdLimitLogEvery = 10 * time.Second

var _ listeners.Listener = (*tcpListener)(nil)

func (l *tcpListener) Init(*slog.Logger) error {
	var err error
	if l.tlsConf != nil {
		l.ln, err = tls.Listen("tcp", l.address, l.tlsConf)
	} else {
		l.ln, err = net.Listen("tcp", l.address)
	}
	return err
}

func (l *tcpListener) ID() string       { return l.id }
func (l *tcpListener) Protocol() string { return "tcp" }
func (l *tcpListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	backoff := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			l.acceptFailed(err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			c.Close() // accepted as the listener closed
			return
		}
		go func() {
			// The connection itself, not a wrapper: the auth hook looks
			// for *tls.Conn.
			if err := c.SetDeadline(time.Now().Add(l.connectTimeout)); err != nil {
				c.Close()
				return
			}
			if err := establish(l.id, c); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				l.logf("broker: client %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// acceptFailed logs a failed Accept; running out of file descriptors gets
// a message that says so, at most every fdLimitLogEvery.
func (l *tcpListener) acceptFailed(err error) {
	full := errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
	l.mu.Lock()
	now := time.Now()
	quiet := now.Sub(l.lastFull) < fdLimitLogEvery
	if !quiet {
		l.lastFull = now
	}
	l.mu.Unlock()
	if quiet {
		return
	}
	if full {
		l.logf("broker: cannot accept connections on %s: %v: the open-file limit (%s) is reached; every client takes one file descriptor (plus about 15 for the broker), so new devices wait until others leave; raise the limit: `ulimit -n 65536` before starting the broker, LimitNOFILE=65536 in its systemd unit, or nofile in /etc/security/limits.conf (ENFILE: fs.file-max for the whole system)", l.Address(), err, FileLimitString())
		return
	}
	l.logf("broker: cannot accept a connection on %s: %v (retrying)", l.Address(), err)
}

// Close ignores mochi's CloseFn: see closeClients.
func (l *tcpListener) Close(_ listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()
	// The listener first: a client whose connection closeClients ends
	// reconnects at once, and must find nobody listening (it would
	// otherwise get a session on a broker that is closing).
	if l.ln != nil {
		l.ln.Close()
	}
	l.closeClients()
}

// closeClients disconnects this listener's clients. Not through mochi's
// CloseFn: that calls Clients.GetByListener, which takes the
// clients' read lock twice, so a client connecting or leaving between the
// two (a writer waiting) deadlocks the whole broker (mochi-mqtt/server
// issue 488, unfixed in v2.7.9; seen here as a test stuck in Broker.Close
// for 8 minutes). GetAll takes the lock once.
func (l *tcpListener) closeClients() {
	for _, cl := range l.srv.Clients.GetAll() {
		if cl.Net.Listener == l.id && !cl.Closed() {
			_ = l.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}
