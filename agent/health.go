package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// maxHealthOutput bounds what a health command's output may cost in memory.
const maxHealthOutput = 4 << 10

// HealthError is a failed health command: what ran, how it ended and the
// tail of its output.
type HealthError struct {
	Command  []string
	Status   string // "exit status 1", "killed by SIGKILL", "timed out after 5s", "could not start: ..."
	Output   string // last lines of stdout+stderr, clipped
	TimedOut bool
}

func (e *HealthError) Error() string {
	msg := fmt.Sprintf("health command %q failed: %s", strings.Join(e.Command, " "), e.Status)
	if e.Output != "" {
		msg += "; output: " + e.Output
	}
	return msg
}

// RunHealth runs a health command with a timeout. It returns nil when the
// command exits 0 in time, else a *HealthError. The command runs in its own
// process group, which is killed as a whole on timeout, so a hanging check
// cannot leak processes. env is added to the agent's environment.
func RunHealth(ctx context.Context, command []string, timeout time.Duration, env []string) error {
	if len(command) == 0 {
		return nil
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Env = childEnv(env) // not the agent's systemd variables (sdnotify.go)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = time.Second
	var out tailBuffer
	out.max = maxHealthOutput
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	he := &HealthError{Command: command, Output: lastLines(out.String(), 5)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		he.TimedOut = true
		he.Status = fmt.Sprintf("timed out after %s", timeout)
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			he.Status = "killed by " + signalName(ws.Signal())
		} else {
			he.Status = fmt.Sprintf("exit status %d", ee.ExitCode())
		}
	default:
		he.Status = "could not start: " + err.Error()
	}
	return he
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > t.max {
		p = p[len(p)-t.max:]
	}
	if t.buf.Len()+len(p) > t.max {
		keep := t.buf.Bytes()[t.buf.Len()+len(p)-t.max:]
		rest := append([]byte(nil), keep...)
		t.buf.Reset()
		t.buf.Write(rest)
	}
	t.buf.Write(p)
	return n, nil
}

func (t *tailBuffer) String() string { return t.buf.String() }

// lastLines returns the last n non-empty lines of s joined with " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var keep []string
	for i := len(lines) - 1; i >= 0 && len(keep) < n; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			keep = append([]string{l}, keep...)
		}
	}
	return strings.Join(keep, " | ")
}
