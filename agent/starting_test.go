package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// While the daemon recovers (after a power cut: a stale agent.sock on disk,
// binaries to hash), its socket already answers: status says "starting",
// installs are refused as busy with a sentence; once ready, both work.
func TestDaemonAnswersWhileRecovering(t *testing.T) {
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	d, err := NewDaemon(k.cfg, a, DaemonOptions{Logf: t.Logf, Version: "test", StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	d.beforeRecover = func() { <-release }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	var c *ControlClient
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err = DialControl(ctx, k.cfg.SocketPath())
		if err == nil {
			break
		}
		if !errors.Is(err, ErrNoDaemon) || time.Now().After(deadline) {
			t.Fatalf("the socket does not answer while the daemon starts: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	r, err := c.Do(ctx, Request{Op: OpStatus}, nil)
	if err != nil || !r.OK {
		t.Fatalf("status while starting: %v %+v", err, r)
	}
	if r.Status.Starting != "recovering" || len(r.Status.Apps) != 1 || r.Status.Apps[0].Version != "1.0.0" {
		t.Fatalf("status while starting: %s", dumpJSON(r.Status))
	}
	r, err = c.Do(ctx, Request{Op: OpSideload, Bundle: k.bundle(spec{Version: "1.1.0", Sequence: 2})}, nil)
	if err != nil || r.OK || r.Code != CodeBusy || !strings.Contains(r.Error, "starting") {
		t.Fatalf("sideload while starting: %v %+v", err, r)
	}

	close(release)
	for deadline := time.Now().Add(20 * time.Second); ; {
		r, err = c.Do(ctx, Request{Op: OpStatus}, nil)
		if err != nil || !r.OK {
			t.Fatalf("status: %v %+v", err, r)
		}
		if r.Status.Starting == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still starting: %s", dumpJSON(r.Status))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r, err = c.Do(ctx, Request{Op: OpSideload, Bundle: k.bundle(spec{Version: "1.1.0", Sequence: 2})}, nil)
	if err != nil || !r.OK {
		t.Fatalf("sideload once ready: %v %+v", err, r)
	}
}
