package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
)

// The control socket serves status requests while a reset of a degraded
// daemon replaces its agent and clears its state error: run with -race.
// Status and the degraded-mode refusals read the state error under the
// daemon's lock, and report the state as it is.
func TestDaemonResetWhileStatus(t *testing.T) {
	k := newKit(t)
	stateErr := errors.New("state.db: bad magic: " + ErrCorruptState.Error())
	d, err := NewDaemon(k.cfg, nil, DaemonOptions{Logf: t.Logf, StateError: stateErr,
		OpenAgent: func() (*Agent, error) { return Open(k.cfg, Options{}) }})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st := d.Status()
			if st.StateError == "" && d.Agent() == nil {
				t.Error("degraded daemon reported no state error")
				return
			}
			if _, _, err := d.Sideload(context.Background(), strings.NewReader(""), nil); err != nil && errors.Is(err, ErrCorruptState) && !errorsContains(err, "bad magic") {
				t.Errorf("degraded refusal without its cause: %v", err)
				return
			}
		}
	}()
	r := d.opReset(context.Background())
	close(stop)
	wg.Wait()
	if !r.OK {
		t.Fatalf("reset: %+v", r)
	}
	a := d.Agent()
	if a == nil {
		t.Fatal("no agent after the reset")
	}
	defer a.Close()
	if st := d.Status(); st.StateError != "" {
		t.Fatalf("state error after the reset: %s", st.StateError)
	}
}

func errorsContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
