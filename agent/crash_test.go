package agent

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runTestAgent runs the real test agent binary; failpoint "" arms none.
func runTestAgent(t *testing.T, k *kit, failpoint string, args ...string) (*os.ProcessState, string) {
	t.Helper()
	bin := buildTestAgent(t, native)
	cmd := exec.Command(bin, append([]string{"-config", k.cfgPath}, args...)...)
	cmd.Env = append(os.Environ(), FailpointEnv+"="+failpoint)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState, string(out)
}

func killedBySIGKILL(ps *os.ProcessState) bool {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// assertDevice checks the promises after a crash: the app path holds a
// complete executable of one of the versions, and (once recovered) the
// database agrees with the files.
func assertComplete(t *testing.T, k *kit, versions ...string) string {
	t.Helper()
	got := runVersion(t, k.appPath)
	for _, v := range versions {
		if got == v {
			return got
		}
	}
	t.Fatalf("app path runs version %q, want one of %v", got, versions)
	return ""
}

func assertConsistent(t *testing.T, k *kit, a *Agent) AppStatus {
	t.Helper()
	st := appStatus(t, a, "hello")
	switch st.State {
	case StateCommitted, StateTrial, StateRolledBack:
	default:
		t.Fatalf("after recovery the app is %q: %s", st.State, dumpJSON(st))
	}
	if got := runVersion(t, k.appPath); got != st.Version {
		t.Fatalf("database says %s, the app path runs %s", st.Version, got)
	}
	if st.Previous != "" {
		if got := runVersion(t, k.appPath+".prev"); got != st.Previous {
			t.Fatalf("database says previous %s, .prev runs %s", st.Previous, got)
		}
	}
	assertNoLeftovers(t, k)
	return st
}

func TestFailpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: crash tests run real processes; not in -short")
	}
	for _, fp := range Failpoints {
		t.Run(fp, func(t *testing.T) {
			k := newKit(t)
			a := k.open(Options{})
			k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
			next := k.bundle(spec{Version: "1.1.0", Sequence: 2})
			var args []string
			switch {
			case strings.HasPrefix(fp, "commit-"):
				k.install(a, next)
				args = []string{"commit", "hello"}
			case strings.HasPrefix(fp, "rollback-"):
				k.install(a, next)
				args = []string{"rollback", "hello", "operator asked"}
			default:
				args = []string{"install", next}
			}
			a.Close()

			ps, out := runTestAgent(t, k, fp, args...)
			if !killedBySIGKILL(ps) {
				t.Fatalf("failpoint %s did not fire (%v): %s", fp, ps, out)
			}
			assertComplete(t, k, "1.0.0", "1.1.0")

			// Restart: the next agent start recovers.
			a = k.open(Options{})
			acts, err := a.Recover(context.Background())
			if err != nil {
				t.Fatalf("recover: %v", err)
			}
			st := assertConsistent(t, k, a)
			t.Logf("%s → %s %s, actions %+v", fp, st.State, st.Version, acts)

			// ...and the install then completes or rolls back.
			switch {
			case strings.HasPrefix(fp, "rollback-"):
				if st.State != StateRolledBack || st.Version != "1.0.0" || !strings.Contains(st.LastError, "operator asked") {
					t.Fatalf("interrupted rollback: %s", dumpJSON(st))
				}
			case strings.HasPrefix(fp, "commit-"):
				if st.State != StateTrial || st.BootsOnTrial != 1 {
					t.Fatalf("interrupted commit: %s", dumpJSON(st))
				}
				if err := a.Commit("hello"); err != nil {
					t.Fatal(err)
				}
			default:
				switch st.State {
				case StateTrial:
					if st.Version != "1.1.0" || st.Previous != "1.0.0" {
						t.Fatalf("finished swap: %s", dumpJSON(st))
					}
				case StateCommitted:
					if st.Version != "1.0.0" || st.LastError == "" {
						t.Fatalf("undone install: %s", dumpJSON(st))
					}
					k.install(a, next)
				}
				if err := a.Rollback("hello", "proves .prev is intact"); err != nil {
					t.Fatal(err)
				}
				assertConsistent(t, k, a)
				if v := runVersion(t, k.appPath); v != "1.0.0" {
					t.Fatalf("after rollback: %s", v)
				}
			}
		})
	}
}

// TestKillAtRandomMoments kills a real sideload at random times; after
// each kill the device holds a complete binary and recovers consistently.
func TestKillAtRandomMoments(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: crash tests run real processes; not in -short")
	}
	k := newKit(t)
	a := k.open(Options{})
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1})
	a.Close()
	bin := buildTestAgent(t, native)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))

	// How long an uninterrupted sideload takes, to aim the kills.
	start := time.Now()
	ver := map[bool]string{}
	seq := uint64(2)
	b := k.bundle(spec{Version: "1.0.1", Sequence: seq})
	if ps, out := runTestAgent(t, k, "", "install", b); !ps.Success() {
		t.Fatalf("uninterrupted sideload failed: %s", out)
	}
	full := time.Since(start)
	a = k.open(Options{})
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	_ = ver

	cur := "1.0.1"
	outcomes := map[string]int{}
	for i := 0; i < 20; i++ {
		seq++
		// Two binaries alternate (building one per iteration is slow);
		// the sequence still rises every time.
		next := map[bool]string{true: "2.0.0", false: "2.0.1"}[i%2 == 0]
		b := k.bundle(spec{Version: next, Sequence: seq})
		cmd := exec.Command(bin, "-config", k.cfgPath, "install", b)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(rng.Int63n(int64(full)*12/10 + 1))
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		assertComplete(t, k, cur, next)

		a = k.open(Options{})
		if _, err := a.Recover(context.Background()); err != nil {
			t.Fatalf("iteration %d (kill after %s): recover: %v", i, delay, err)
		}
		st := assertConsistent(t, k, a)
		outcomes[st.State]++
		switch st.State {
		case StateTrial:
		case StateCommitted:
			if st.Version != cur {
				t.Fatalf("undone install left %s, want %s", st.Version, cur)
			}
			k.install(a, b) // the install then completes
		default:
			t.Fatalf("iteration %d: state %s", i, st.State)
		}
		if err := a.Commit("hello"); err != nil {
			t.Fatal(err)
		}
		if got := runVersion(t, k.appPath); got != next {
			t.Fatalf("after completing: %s, want %s", got, next)
		}
		a.Close()
		cur = next
	}
	t.Logf("sideload takes %s; after random kills: %v", full, outcomes)
}

var _ = errors.Is
