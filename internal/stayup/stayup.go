// Package stayup runs a probe that passes by staying up: the packer runs it
// under emulation and the agent on the device, the same way (SPEC.md §3,
// probe.stay_up). It holds no state and reads no untrusted input; the
// process it starts is killed before Run returns.
package stayup

import (
	"os/exec"
	"syscall"
	"time"
)

// Run starts cmd and reports whether it was still running after d; then
// it is stopped (SIGTERM, SIGKILL a second later), and that exit is not an
// error. An earlier exit is returned as cmd.Wait returns it.
func Run(cmd *exec.Cmd, d time.Duration) (bool, error) {
	if err := cmd.Start(); err != nil {
		return false, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return false, err
	case <-t.C:
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Second):
			cmd.Process.Kill()
			<-done
		}
		return true, nil
	}
}
