package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRunHealth(t *testing.T) {
	ctx := context.Background()
	if err := RunHealth(ctx, nil, time.Second, nil); err != nil {
		t.Fatalf("no command: %v", err)
	}
	if err := RunHealth(ctx, []string{"/bin/sh", "-c", "echo fine"}, 5*time.Second, nil); err != nil {
		t.Fatalf("passing command: %v", err)
	}
	err := RunHealth(ctx, []string{"/bin/sh", "-c", "echo db unreachable >&2; exit 4"}, 5*time.Second, nil)
	var he *HealthError
	if !errors.As(err, &he) || he.Status != "exit status 4" || !strings.Contains(he.Output, "db unreachable") {
		t.Fatalf("failing command: %#v", err)
	}
	if !strings.Contains(err.Error(), "db unreachable") {
		t.Fatalf("error does not carry the output: %v", err)
	}
	err = RunHealth(ctx, []string{"/bin/sh", "-c", "echo $PROBE_VAR; exit 1"}, 5*time.Second, []string{"PROBE_VAR=from-env"})
	if !errors.As(err, &he) || he.Output != "from-env" {
		t.Fatalf("env not passed: %v", err)
	}
	// A hanging check (with a child holding the output pipe) is killed at
	// the timeout as a whole process group.
	err = RunHealth(ctx, []string{"/bin/sh", "-c", "sleep 300 & sleep 300"}, 200*time.Millisecond, nil)
	if !errors.As(err, &he) || !he.TimedOut {
		t.Fatalf("hanging command: %v", err)
	}
	err = RunHealth(ctx, []string{"/nonexistent/health"}, time.Second, nil)
	if !errors.As(err, &he) || !strings.HasPrefix(he.Status, "could not start") {
		t.Fatalf("missing command: %v", err)
	}
}

func TestTailBuffer(t *testing.T) {
	tb := tailBuffer{max: 8}
	tb.Write([]byte("0123456789"))
	if tb.String() != "23456789" {
		t.Fatalf("got %q", tb.String())
	}
	tb.Write([]byte("ab"))
	if tb.String() != "456789ab" {
		t.Fatalf("got %q", tb.String())
	}
}
