package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// edgefleet logs against the embedded broker and a real agent: the app's
// output and the agent's lines about it, an unknown app refused by the
// device, a device that does not answer, and --follow printing the next
// version's output as it comes.
func TestRemoteLogs(t *testing.T) {
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f := newRFleet(t, b.URL())
	f.start("pi-1", nil)
	f.cli(0, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", f.bundle("1.0.0", 1, false))
	testkit.Eventually(t, "pi-1 commits 1.0.0", func() bool { return f.view.Converged("hello", "1.0.0", 1, stateCommitted) })

	out := f.cli(0, "logs", "pi-1", "hello", "--broker", f.url)
	if !strings.Contains(out, "hello 1.0.0 serving") || !strings.Contains(out, "agent: ") {
		t.Fatalf("logs pi-1 hello:\n%s", out)
	}
	out = f.cli(1, "logs", "pi-1", "nope", "--broker", f.url)
	if !strings.Contains(out, "app nope is not configured on this device") {
		t.Fatalf("logs of an unknown app:\n%s", out)
	}
	out = f.cli(1, "logs", "pi-9", "--broker", f.url, "--timeout", "1s")
	if !strings.Contains(out, "device pi-9 did not answer within 1s") {
		t.Fatalf("logs of a device that does not answer:\n%s", out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var so, se syncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, &cliEnv{stdin: strings.NewReader(""), stdout: &so, stderr: &se, getenv: func(string) string { return "" }},
			[]string{"logs", "pi-1", "--follow", "--interval", "300ms", "--broker", f.url})
	}()
	testkit.Eventually(t, "logs --follow prints the current output", func() bool { return strings.Contains(so.String(), "hello 1.0.0 serving") })
	f.cli(0, "publish", "--broker", f.url, "--pub", f.pubPath, "--quiet", f.bundle("1.1.0", 2, false))
	testkit.Eventually(t, "logs --follow prints the new version's output", func() bool { return strings.Contains(so.String(), "hello 1.1.0 serving") })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("logs --follow exited %d: %s", code, se.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs --follow did not stop when interrupted")
	}
	if n := strings.Count(so.String(), "hello 1.0.0 serving"); n != 1 {
		t.Errorf("--follow printed the same line %d times:\n%s", n, so.String())
	}
}
