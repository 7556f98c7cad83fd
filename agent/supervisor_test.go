package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests supervise real processes (/bin/sh scripts).

func newTestSupervisor(t *testing.T, script string, mod func(*SupervisorOptions)) *Supervisor {
	t.Helper()
	opts := SupervisorOptions{
		Name:       "test",
		Path:       "/bin/sh",
		Args:       []string{"-c", script},
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
		StopGrace:  2 * time.Second,
		Logf:       t.Logf,
	}
	if mod != nil {
		mod(&opts)
	}
	s, err := NewSupervisor(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

func nextExit(t *testing.T, s *Supervisor) Exit {
	t.Helper()
	select {
	case e := <-s.Exits():
		return e
	case <-time.After(20 * time.Second):
		t.Fatal("no exit reported within 20s")
		return Exit{}
	}
}

// waitFor polls cond on every state change (or every 20ms for output).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestSupervisorRestartsAndReportsExitCode(t *testing.T) {
	s := newTestSupervisor(t, "echo started; echo oops >&2; exit 3", nil)
	for i := 0; i < 3; i++ {
		e := nextExit(t, s)
		if e.Code != 3 || e.Signal != "" || e.Requested {
			t.Fatalf("exit %d: got %+v, want code 3", i, e)
		}
		if e.String() != "exit status 3" {
			t.Fatalf("exit string %q", e.String())
		}
	}
	waitFor(t, "output lines", func() bool { return len(s.Output()) >= 4 })
	out := s.Output()
	if out[0] != "started" && out[0] != "oops" {
		t.Fatalf("output %q does not hold the app's lines", out)
	}
	if st := s.State(); st.Restarts < 3 || st.LastExit == nil {
		t.Fatalf("state %+v: want at least 3 restarts and a last exit", st)
	}
}

func TestSupervisorReportsSignal(t *testing.T) {
	s := newTestSupervisor(t, "kill -SEGV $$", nil)
	e := nextExit(t, s)
	if e.Signal != "SIGSEGV" || e.Code != -1 {
		t.Fatalf("got %+v, want killed by SIGSEGV", e)
	}
	if e.String() != "killed by SIGSEGV" {
		t.Fatalf("exit string %q", e.String())
	}
}

func TestSupervisorStartFailure(t *testing.T) {
	s := newTestSupervisor(t, "", func(o *SupervisorOptions) { o.Path = "/nonexistent/app"; o.Args = nil })
	e := nextExit(t, s)
	if e.StartError == "" || !strings.HasPrefix(e.String(), "could not start") {
		t.Fatalf("got %+v, want a start error", e)
	}
}

func TestSupervisorStopForwardsSIGTERM(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "terminated")
	// The app traps TERM, writes a marker and exits 0: a graceful stop.
	script := `trap 'echo bye > ` + marker + `; exit 0' TERM; echo ready; while :; do sleep 0.05; done`
	s := newTestSupervisor(t, script, nil)
	waitFor(t, "ready", func() bool { return len(s.Output()) > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(b)) != "bye" {
		t.Fatalf("app did not get SIGTERM: marker %q, %v", b, err)
	}
	st := s.State()
	if st.Running || st.LastExit == nil || !st.LastExit.Requested || st.LastExit.Code != 0 {
		t.Fatalf("after stop: %+v", st)
	}
}

func TestSupervisorStopKillsAfterGrace(t *testing.T) {
	// Ignores TERM: must be killed with SIGKILL after the grace period,
	// together with its child (the whole process group).
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := `trap '' TERM; sleep 300 & echo $! > ` + pidFile + `; echo ready; wait`
	s := newTestSupervisor(t, script, func(o *SupervisorOptions) { o.StopGrace = 200 * time.Millisecond })
	waitFor(t, "ready", func() bool { return len(s.Output()) > 0 })
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for _, c := range strings.TrimSpace(string(b)) {
		child = child*10 + int(c-'0')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.State(); st.LastExit == nil || st.LastExit.Signal != "SIGKILL" {
		t.Fatalf("last exit %+v, want SIGKILL", st.LastExit)
	}
	waitFor(t, "child gone", func() bool {
		err := syscall.Kill(child, 0)
		if errors.Is(err, syscall.ESRCH) {
			return true
		}
		// A zombie re-parented to init still answers kill 0; check state.
		stat, _ := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
		return strings.Contains(string(stat), ") Z ")
	})
}

func TestSupervisorRestartRunsNewProcess(t *testing.T) {
	s := newTestSupervisor(t, "echo up; exec sleep 300", nil)
	waitFor(t, "running", func() bool { return s.State().Running })
	first := s.State()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	run, err := s.Restart(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if run <= first.Run {
		t.Fatalf("restart returned run %d, first was %d", run, first.Run)
	}
	st := s.State()
	if !st.Running || st.PID == first.PID || st.Run != run {
		t.Fatalf("after restart: %+v (first %+v)", st, first)
	}
	if st.Restarts != 0 {
		t.Fatalf("a requested restart counted as a crash: %+v", st)
	}
	e := nextExit(t, s)
	if !e.Requested || e.Run != first.Run {
		t.Fatalf("exit of the first run: %+v", e)
	}
}

func TestSupervisorOutputRingIsBounded(t *testing.T) {
	long := strings.Repeat("x", 2000)
	script := `i=0; while [ $i -lt 120 ]; do echo line$i; i=$((i+1)); done; echo ` + long + `; exec sleep 300`
	s := newTestSupervisor(t, script, func(o *SupervisorOptions) { o.OutputLines = 10; o.MaxLineLength = 100 })
	waitFor(t, "the long line", func() bool {
		out := s.Output()
		return len(out) > 0 && strings.HasPrefix(out[len(out)-1], "xxx")
	})
	out := s.Output()
	if len(out) != 10 {
		t.Fatalf("kept %d lines, want 10", len(out))
	}
	if out[0] != "line111" || out[8] != "line119" {
		t.Fatalf("ring order wrong: %q", out)
	}
	if n := len(out[9]); n > 100+len("…") {
		t.Fatalf("long line kept at %d bytes", n)
	}
}

func TestNextBackoff(t *testing.T) {
	d := 200 * time.Millisecond
	var seq []time.Duration
	for i := 0; i < 10; i++ {
		seq = append(seq, d)
		d = nextBackoff(d, 30*time.Second)
	}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond, 25600 * time.Millisecond, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if seq[i] != want[i] {
			t.Fatalf("backoff sequence %v, want %v", seq, want)
		}
	}
}

func TestSupervisorCrashesSince(t *testing.T) {
	s := newTestSupervisor(t, "exit 1", nil)
	for i := 0; i < 4; i++ {
		nextExit(t, s)
	}
	if n := s.CrashesSince(1); n < 4 {
		t.Fatalf("CrashesSince(1) = %d after 4 crashes", n)
	}
	if n := s.CrashesSince(3); n < 2 || n > s.CrashesSince(1)-2 {
		t.Fatalf("CrashesSince(3) = %d, CrashesSince(1) = %d", n, s.CrashesSince(1))
	}
}

func TestSupervisorOptionsValidate(t *testing.T) {
	var o SupervisorOptions
	if err := o.Validate(); err == nil {
		t.Fatal("no name accepted")
	}
	o = SupervisorOptions{Name: "x", Path: "/bin/true"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.MinBackoff != 200*time.Millisecond || o.MaxBackoff != 30*time.Second || o.OutputLines != 50 || o.StopGrace != 5*time.Second {
		t.Fatalf("defaults: %+v", o)
	}
}
