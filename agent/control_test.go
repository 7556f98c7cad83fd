package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecodeRequest(t *testing.T) {
	for _, ok := range []string{
		`{"op":"status"}`,
		`{"op":"sideload","bundle":"/x.efb","wait":true}`,
		`{"op":"rollback","app":"hello","reason":"why"}`,
		` {"op":"reset"} `,
	} {
		if _, err := DecodeRequest([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{
		``, `{`, `[]`, `{"op":"status"}{"op":"status"}`, `{"op":"status","extra":1}`,
		`{"op":"format-disk"}`, `{"op":1}`, `null`,
		`{"op":"status"}` + strings.Repeat(" ", maxRequestLine),
	} {
		if _, err := DecodeRequest([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"op":"status"}`, `{"op":"sideload","bundle":"/a","wait":true}`, `{"op":"rollback","app":"x"}`, `{`, `{"op":"status"} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err != nil {
			if req != (Request{}) {
				t.Fatalf("error with a non-zero request: %+v", req)
			}
			return
		}
		switch req.Op {
		case OpStatus, OpCheck, OpSideload, OpRollback, OpReset, OpKeySet:
		default:
			t.Fatalf("accepted op %q", req.Op)
		}
	})
}

// A degraded daemon (state unreadable) still supervises the app and answers
// on its socket, refuses installs with a reason and reports the state error.
func TestDaemonDegradedControlSocket(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{
		DeviceID:    "dev-1",
		DataDir:     filepath.Join(dir, "data"),
		TrustedKeys: []string{filepath.Join(dir, "k.pub")},
		Apps:        []AppConfig{{Name: "sleeper", Path: "/bin/sh", Args: []string{"-c", "echo up; exec sleep 300"}}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	stateErr := fmt.Errorf("state.db: bad magic: %w", ErrCorruptState)
	d, err := NewDaemon(cfg, nil, DaemonOptions{Logf: t.Logf, StateError: stateErr, StopGrace: time.Second,
		OpenAgent: func() (*Agent, error) { return nil, errors.New("not in this test") }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if _, err := os.Stat(cfg.SocketPath()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	}()

	var c *ControlClient
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err = DialControl(ctx, cfg.SocketPath())
		if err == nil {
			break
		}
		if !errors.Is(err, ErrNoDaemon) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	fi, err := os.Stat(cfg.SocketPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}

	var st DaemonStatus
	for time.Now().Before(deadline) {
		r, err := c.Do(ctx, Request{Op: OpStatus}, nil)
		if err != nil || !r.OK {
			t.Fatalf("status: %v %+v", err, r)
		}
		st = *r.Status
		if len(st.Apps) == 1 && st.Apps[0].Process != nil && st.Apps[0].Process.Running && len(st.Apps[0].Output) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !st.Daemon || st.DeviceID != "dev-1" || !strings.Contains(st.StateError, "bad magic") || st.Apps[0].Output[0] != "up" {
		t.Fatalf("status: %+v", st)
	}

	bundle := filepath.Join(dir, "x.efb")
	os.WriteFile(bundle, []byte("whatever"), 0o644)
	r, err := c.Do(ctx, Request{Op: OpSideload, Bundle: bundle}, nil)
	if err != nil || r.OK || r.Code != CodeRefused || !strings.Contains(r.Error, "reset") {
		t.Fatalf("sideload while degraded: %v %+v", err, r)
	}
	r, err = c.Do(ctx, Request{Op: OpSideload, Bundle: "relative.efb"}, nil)
	if err != nil || r.OK || r.Code != CodeUsage {
		t.Fatalf("relative bundle path: %v %+v", err, r)
	}
	// A malformed line gets a usage answer and the connection closes.
	if _, err := c.conn.Write([]byte("{nope\n")); err != nil {
		t.Fatal(err)
	}
	line, err := readLine(c.br, 1<<20)
	if err != nil || !strings.Contains(string(line), `"code":"usage"`) {
		t.Fatalf("malformed request answer %q, %v", line, err)
	}
}
