package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// demoTmp points the demo's working directory (os.MkdirTemp) at a fresh
// directory the test can inspect afterwards.
func demoTmp(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("SKIPPED: the demo runs edgefleet-agent, which is Linux only (this is %s)", runtime.GOOS)
	}
	// Short: the agents' control sockets live below it (Unix socket paths
	// have at most 107 bytes; the demo would fall back to /tmp).
	tmp, err := os.MkdirTemp("/tmp", "efdemo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// lockedBuffer is written by the demo and read by the test concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	// onWrite, when set, sees the whole output after each write.
	onWrite func(string)
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.b.Write(p)
	s := l.b.String()
	l.mu.Unlock()
	if l.onWrite != nil {
		l.onWrite(s)
	}
	return n, err
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func runDemoCLI(ctx context.Context, stdout *lockedBuffer, args ...string) (int, string) {
	var stderr lockedBuffer
	code := run(ctx, &cliEnv{stdin: strings.NewReader(""), stdout: stdout, stderr: &stderr, getenv: os.Getenv}, append([]string{"demo"}, args...))
	return code, stderr.String()
}

// assertNothingLeft checks that the demo removed its working directory and
// that no process runs from it (agents, apps, health checks).
func assertNothingLeft(t *testing.T, tmp string) {
	t.Helper()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		if cmd := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); strings.Contains(cmd, tmp) {
			t.Errorf("process still running from the demo's directory: %s: %s", filepath.Dir(p), cmd)
		}
	}
}

// TestDemo runs the whole demo with two real agents: 1.0.0 converges on a
// plain publish, 2.0.0 through a staged rollout, and the broken 3.0.0
// fails on the canary: the rollout halts and the other device never sees
// it; nothing is left running or on disk.
func TestDemo(t *testing.T) {
	tmp := demoTmp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out lockedBuffer
	code, errs := runDemoCLI(ctx, &out, "--devices", "2")
	stdout := out.String()
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, errs)
	}
	for _, want := range []string{
		"[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6] Summary",
		"all 2 devices: hello 1.0.0 committed",
		"started rollout hello-2-",
		"all 2 devices: hello 2.0.0 committed",
		"all 2 devices: the rollout of hello 3.0.0 halted, every device on 2.0.0",
		"rollout halted: halted in wave 1: 1 of 1 devices failed",
		"Every device runs hello 2.0.0. hello 3.0.0 reached 1 of 2 devices",
		"1 devices never downloaded a byte of it",
		"Reason reported by 1 of 2 devices: hello 3.0.0 failed its health check on trial",
		"Stopped 2 agents and the broker, removed ",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// One device in the rollback phase installed 3.0.0 and rolled back,
	// the other never saw it.
	canary := regexp.MustCompile(`(demo-0[12]) .*installed hello 3\.0\.0, its health check failed → rolled back to 2\.0\.0, wave 1`).FindStringSubmatch(stdout)
	if canary == nil {
		t.Fatalf("output lacks the canary installing 3.0.0 and rolling back")
	}
	other := "demo-01"
	if canary[1] == other {
		other = "demo-02"
	}
	if !regexp.MustCompile(other + ` .*never saw hello 3\.0\.0`).MatchString(stdout) {
		t.Errorf("output does not say that %s never saw 3.0.0", other)
	}
	final := stdout[strings.LastIndex(stdout, "what `edgefleet status` shows now:"):]
	if !regexp.MustCompile(`(?m)^\s+` + canary[1] + `\s+\S+\s+hello\s+2\.0\.0\s+rolled-back\s`).MatchString(final) {
		t.Errorf("the last status table does not show %s on 2.0.0, rolled back:\n%s", canary[1], final)
	}
	if !regexp.MustCompile(`(?m)^\s+` + other + `\s+\S+\s+hello\s+2\.0\.0\s+committed\s`).MatchString(final) {
		t.Errorf("the last status table does not show %s on 2.0.0, committed:\n%s", other, final)
	}
	if !strings.Contains(final, "hello 2.0.0: 2") {
		t.Errorf("the last summary line does not count both devices on 2.0.0:\n%s", final)
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", stdout, errs)
	}
	assertNothingLeft(t, tmp)
}

// TestDemoInterrupted cancels the demo (as Ctrl-C does) once the devices
// run: it stops every agent and removes everything.
func TestDemoInterrupted(t *testing.T) {
	tmp := demoTmp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := lockedBuffer{onWrite: func(s string) {
		if strings.Contains(s, "all 1 devices: online") {
			cancel()
		}
	}}
	code, errs := runDemoCLI(ctx, &out, "--devices", "1")
	if code != 1 || !strings.Contains(errs, "interrupted; stopping the devices and cleaning up") {
		t.Fatalf("interrupted demo: exit %d, want 1 with a note\nstdout:\n%s\nstderr:\n%s", code, out.String(), errs)
	}
	if !strings.Contains(out.String(), "Stopped 1 agent and the broker, removed") {
		t.Errorf("the interrupted demo did not say it cleaned up:\n%s", out.String())
	}
	assertNothingLeft(t, tmp)
}

// TestDemoTimeout: a phase that does not converge in time fails with where
// each device stands and keeps the logs; the agents are stopped.
func TestDemoTimeout(t *testing.T) {
	tmp := demoTmp(t)
	var out lockedBuffer
	code, errs := runDemoCLI(context.Background(), &out, "--devices", "1", "--timeout", "1ms")
	if code != 1 || !strings.Contains(errs, `the fleet did not reach "online" within 1ms`) || !strings.Contains(errs, "agent.log") {
		t.Fatalf("timed-out demo: exit %d, want 1 with the devices and their logs\nstdout:\n%s\nstderr:\n%s", code, out.String(), errs)
	}
	m := regexp.MustCompile(`Kept (\S+) for you to look at`).FindStringSubmatch(errs)
	if m == nil {
		t.Fatalf("the failed demo does not say where its logs are:\n%s", errs)
	}
	if _, err := os.Stat(filepath.Join(m[1], "devices", "demo-01", "agent.log")); err != nil {
		t.Errorf("the failed demo did not keep the agent's log: %v", err)
	}
	os.RemoveAll(m[1])
	assertNothingLeft(t, tmp)
}

// TestDemoOutsideSourceTree: the demo builds from source; elsewhere it says
// so and leaves nothing behind.
func TestDemoOutsideSourceTree(t *testing.T) {
	outside := t.TempDir()
	tmp := demoTmp(t)
	t.Chdir(outside)
	var out lockedBuffer
	code, errs := runDemoCLI(context.Background(), &out, "--devices", "1")
	if code != 1 || !strings.Contains(errs, "run it from the edgefleet source tree") {
		t.Fatalf("outside the source tree: exit %d, want 1 with a hint\nstderr:\n%s", code, errs)
	}
	assertNothingLeft(t, tmp)
}

func TestDemoUsage(t *testing.T) {
	for _, args := range [][]string{{"--devices", "0"}, {"--devices", "51"}, {"extra"}, {"--timeout", "0s"}} {
		var out lockedBuffer
		if code, errs := runDemoCLI(context.Background(), &out, args...); code != 2 {
			t.Errorf("demo %v: exit %d, want 2\n%s", args, code, errs)
		}
	}
}
