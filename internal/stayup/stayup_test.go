package stayup

import (
	"os/exec"
	"testing"
	"time"
)

// TestRun: a real process that stays up passes and is stopped; one that
// exits early does not pass and its exit status is returned.
func TestRun(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	start := time.Now()
	up, err := Run(cmd, 200*time.Millisecond)
	if !up || err != nil {
		t.Fatalf("sleep 30 for 200ms: up %v, err %v", up, err)
	}
	if cmd.ProcessState == nil || !cmd.ProcessState.Exited() && cmd.ProcessState.String() == "" {
		t.Fatalf("the process was not waited for: %v", cmd.ProcessState)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("Run returned after %s: the process was not stopped", time.Since(start))
	}
	up, err = Run(exec.Command("sh", "-c", "exit 3"), 5*time.Second)
	if up || err == nil {
		t.Fatalf("exit 3: up %v, err %v; want not up and the exit error", up, err)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("exit 3: err %v, want exit status 3", err)
	}
}
