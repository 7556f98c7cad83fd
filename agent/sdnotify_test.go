package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sdSocket is a service manager's notify socket: a real unixgram socket
// that the daemon under test finds through NOTIFY_SOCKET.
type sdSocket struct {
	t    *testing.T
	conn *net.UnixConn
}

func newSDSocket(t *testing.T, watchdog time.Duration) *sdSocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd") // short: a socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", p)
	if watchdog > 0 {
		t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
		t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	}
	return &sdSocket{t: t, conn: conn}
}

// next is the next message within wait, or "" when none came.
func (s *sdSocket) next(wait time.Duration) string {
	s.t.Helper()
	buf := make([]byte, 4096)
	s.conn.SetReadDeadline(time.Now().Add(wait))
	n, err := s.conn.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		s.t.Fatal(err)
	}
	return string(buf[:n])
}

// waitFor reads messages until one has prefix, and returns it.
func (s *sdSocket) waitFor(prefix string, wait time.Duration) string {
	s.t.Helper()
	deadline := time.Now().Add(wait)
	var seen []string
	for time.Now().Before(deadline) {
		m := s.next(time.Until(deadline))
		if strings.HasPrefix(m, prefix) {
			return m
		}
		if m != "" {
			seen = append(seen, m)
		}
	}
	s.t.Fatalf("no %q from the daemon within %s; got %q", prefix, wait, seen)
	return ""
}

// Under systemd (docs/systemd, Type=notify with a watchdog) the daemon
// says READY only once recovery is done, pings the watchdog only while its
// state can be taken, and says STOPPING when it stops; the apps do not get
// the service manager's variables.
func TestDaemonNotifiesSystemd(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	sd := newSDSocket(t, 400*time.Millisecond) // a ping every 200 ms
	d, err := NewDaemon(k.cfg, a, DaemonOptions{Logf: t.Logf, Version: "test", StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	recovering := make(chan struct{})
	d.beforeRecover = func() { close(recovering); <-release }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	// Hung in its start (here: held before recovery), it says nothing:
	// systemd's start timeout, or after a re-exec its watchdog, sees it.
	<-recovering
	if m := sd.next(time.Second); m != "" {
		t.Fatalf("the daemon notified %q before it was ready", m)
	}
	close(release)
	ready := sd.waitFor("READY=1", 20*time.Second)
	if !strings.Contains(ready, "STATUS=agent test running 1 apps") {
		t.Errorf("READY without the status line: %q", ready)
	}
	for i := 0; i < 3; i++ {
		sd.waitFor("WATCHDOG=1", 10*time.Second)
	}

	// A daemon stuck with its state mutex held gets no pings. (A ping that
	// had passed the check before the lock may still be on its way: drain.)
	d.mu.Lock()
	time.Sleep(300 * time.Millisecond)
	for sd.next(50*time.Millisecond) != "" {
	}
	m := sd.next(1500 * time.Millisecond)
	d.mu.Unlock()
	if m != "" {
		t.Fatalf("the daemon notified %q while its state mutex was held", m)
	}
	sd.waitFor("WATCHDOG=1", 10*time.Second)

	// A health command (like an app) runs without NOTIFY_SOCKET and
	// WATCHDOG_*, with its own variables.
	out := filepath.Join(t.TempDir(), "env")
	if err := RunHealth(ctx, []string{"/bin/sh", "-c", "env > " + out}, 10*time.Second, []string{"HELLO_MODE=x"}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="} {
		if strings.Contains(string(raw), v) {
			t.Errorf("a child of the agent got %s…:\n%s", v, raw)
		}
	}
	if !strings.Contains(string(raw), "HELLO_MODE=x\n") {
		t.Errorf("a child of the agent lost its own variable:\n%s", raw)
	}

	cancel()
	sd.waitFor("STOPPING=1", 20*time.Second)
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	stopped = true
	// After Run returns (the caller exits or re-executes), no more pings.
	for sd.next(50*time.Millisecond) != "" {
	}
	if m := sd.next(time.Second); m != "" {
		t.Fatalf("the daemon notified %q after Run returned", m)
	}
}

// A notify socket that is gone (a broken service manager, a unit file
// that sets one by hand) costs a single log line: the daemon runs its
// apps as before, and systemd then does what its settings say.
func TestDaemonNotifySocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	var mu sync.Mutex
	var complaints int
	d, err := NewDaemon(k.cfg, a, DaemonOptions{Logf: func(f string, args ...any) {
		line := fmt.Sprintf(f, args...)
		if strings.Contains(line, "cannot notify the service manager") {
			mu.Lock()
			complaints++
			mu.Unlock()
		}
		t.Log(line)
	}, Version: "test", StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	c := dialWhenReady(t, k.cfg.SocketPath())
	defer c.Close()
	time.Sleep(time.Second) // about 20 watchdog pings
	r, err := c.Do(ctx, Request{Op: OpStatus}, nil)
	if err != nil || !r.OK || r.Status.Starting != "" || len(r.Status.Apps) != 1 || r.Status.Apps[0].Version != "1.0.0" {
		t.Fatalf("status with the notify socket gone: %v %s", err, dumpJSON(r))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if mu.Lock(); complaints != 1 {
		t.Fatalf("%d log lines about the notify socket, want exactly 1", complaints)
	}
}

// dialWhenReady dials the control socket until the daemon says it is ready.
func dialWhenReady(t *testing.T, sock string) *ControlClient {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not become ready in 20 s")
		}
		c, err := DialControl(ctx, sock)
		if err != nil {
			continue
		}
		r, err := c.Do(ctx, Request{Op: OpStatus}, nil)
		if err == nil && r.OK && r.Status.Starting == "" {
			return c
		}
		c.Close()
	}
}
