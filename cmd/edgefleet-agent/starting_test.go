package main

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// After a power cut the stale agent.sock is still on disk, and the daemon
// takes the state database's lock before it serves the socket. A field
// engineer who types `status` in that window gets an answer once the
// daemon serves, not "does not answer" (issue 14).
func TestStatusWaitsForStartingDaemon(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	cfg, err := agent.LoadConfig(d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon's first step: the state database, locked.
	a, err := agent.Open(cfg, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The socket a power cut left behind: a name nobody listens on.
	ln, err := net.Listen("unix", cfg.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	cmd := exec.Command(d.cli, "status", "--config", d.cfgPath)
	var so, se syncBuffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Let status find the database locked and the socket dead first.
	var early error
	waited := false
	for !waited {
		select {
		case early = <-exited:
			t.Fatalf("status gave up while the daemon was starting (%v):\nstdout:\n%s\nstderr:\n%s", early, so.String(), se.String())
		case <-time.After(50 * time.Millisecond):
			waited = strings.Contains(se.String(), "waiting")
		}
	}

	dm, err := agent.NewDaemon(cfg, a, agent.DaemonOptions{Logf: t.Logf, Version: "test", StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dm.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		a.Close()
	}()

	if err := <-exited; err != nil {
		t.Fatalf("status: %v\nstdout:\n%s\nstderr:\n%s", err, so.String(), se.String())
	}
	if !strings.Contains(so.String(), "daemon pid") || !strings.Contains(so.String(), "hello") {
		t.Fatalf("status did not report the daemon:\n%s", so.String())
	}
	t.Logf("stderr: %s", strings.TrimSpace(se.String()))
}

// A field command holding the state database when the daemon starts (a
// status typed right after boot, before the daemon took the lock) must not
// make the daemon exit: it waits for the lock.
func TestRunWaitsForAFieldCommandsLock(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	cfg, err := agent.LoadConfig(d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.Open(cfg, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.cli, "run", "--config", d.cfgPath)
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	// Hold the lock longer than the old 1s timeout.
	select {
	case <-done:
		a.Close()
		t.Fatalf("the daemon exited while a field command held the database (%v):\n%s", werr, log.String())
	case <-time.After(2500 * time.Millisecond):
	}
	a.Close()
	d.waitStatus("the daemon answers after the field command let go", func(st agent.DaemonStatus) bool { return st.Daemon && st.Starting == "" })
}
