package agent

import (
	"context"
	"errors"
	"os"
	"testing"
)

// A device whose state database is corrupt runs degraded: it cannot verify
// or install, so the retained releases the broker sends at connect are
// ignored. After `edgefleet-agent reset` it must still learn about them;
// it used to wait for the next reconnect or publish, which on a quiet
// fleet means never.
func TestMQTTDegradedThenResetFetchesRelease(t *testing.T) {
	k := newKit(t)
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	publish(t, op, k, k.bundle(spec{Version: "1.0.0", Sequence: 1}), "")

	cfg := mqttConfig(t, k, "dev-degraded", b.URL())
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.StatePath(), []byte("not a bbolt file, a corrupt one"), 0o600); err != nil {
		t.Fatal(err)
	}
	logf := func(f string, a ...any) { t.Logf("dev-degraded: "+f, a...) }
	_, stateErr := Open(cfg, Options{Logf: logf})
	if !errors.Is(stateErr, ErrCorruptState) {
		t.Fatalf("open a corrupt state: %v", stateErr)
	}
	d, err := NewDaemon(cfg, nil, DaemonOptions{Logf: logf, Version: "test", StateError: stateErr,
		OpenAgent: func() (*Agent, error) { return Open(cfg, Options{Logf: logf}) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		if a := d.Agent(); a != nil {
			a.Close()
		}
	}()

	// The device is connected (its status is on the broker), so the
	// retained release has been sent to it while it was degraded.
	view := fleetView(t, op)
	eventually(t, "the degraded device reports online", func() bool {
		for _, dv := range view.Devices() {
			if dv.Device == "dev-degraded" && dv.Online {
				return true
			}
		}
		return false
	})
	var c *ControlClient
	eventually(t, "the control socket answers", func() bool {
		c, err = DialControl(ctx, cfg.SocketPath())
		return err == nil
	})
	defer c.Close()
	r, err := c.Do(ctx, Request{Op: OpReset}, nil)
	if err != nil || !r.OK {
		t.Fatalf("reset: %v %+v", err, r)
	}
	eventually(t, "the reset device installs the retained release and commits it", func() bool {
		a := d.Agent()
		if a == nil {
			return false
		}
		v, _, err := a.Installed("hello")
		if err != nil || v != "1.0.0" {
			return false
		}
		return appStatus(t, a, "hello").State == StateCommitted
	})
}
