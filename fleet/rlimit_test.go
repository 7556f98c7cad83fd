//go:build linux

package fleet

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fdChildEnv makes the test binary act as a broker with a tiny open-file
// limit (the parent dials it from its own process).
const fdChildEnv = "EDGEFLEET_TEST_FDLIMIT_CHILD"

func TestFDLimitChild(t *testing.T) {
	mode := os.Getenv(fdChildEnv)
	if mode == "" {
		t.Skip("helper process of TestBrokerSaysWhenFDLimitHit and TestRaiseFileLimit, run by them")
	}
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	low, _ := strconv.ParseUint(os.Getenv(fdChildEnv+"_SOFT"), 10, 64)
	r.Cur = low
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	if mode == "raise" {
		soft, hard, err := RaiseFileLimit()
		fmt.Printf("soft=%d hard=%d err=%v want_hard=%d\n", soft, hard, err, r.Max)
		return
	}
	b, err := StartBroker(BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(b.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent is done
	b.Close()
}

func fdChild(t *testing.T, mode string, soft int) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestFDLimitChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fdChildEnv+"="+mode, fdChildEnv+"_SOFT="+strconv.Itoa(soft))
	return cmd
}

// A broker out of file descriptors says so, with the limit and how to
// raise it, and keeps accepting once descriptors are free again.
func TestBrokerSaysWhenFDLimitHit(t *testing.T) {
	cmd := fdChild(t, "broker", 48)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("broker child: %v\n%s", err, stderr.String())
	}
	addr = strings.TrimSpace(addr)
	var conns []net.Conn
	for range 80 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	for _, c := range conns {
		c.Close()
	}
	// Descriptors are free again: a new client gets in.
	ok := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !ok; {
		op, err := Connect(t.Context(), ClientOptions{Broker: "tcp://" + addr, ClientID: "after"})
		if err == nil {
			op.Disconnect(10)
			ok = true
		}
	}
	stdin.Close()
	cmd.Wait()
	out := stderr.String()
	if !strings.Contains(out, "open-file limit (soft 48") || !strings.Contains(out, "ulimit -n") || !strings.Contains(out, "LimitNOFILE") {
		t.Errorf("no clear message about the fd limit after 80 connections with a soft limit of 48:\n%s", out)
	}
	if !ok {
		t.Errorf("the broker accepted no client after the others left")
	}
}

func TestRaiseFileLimit(t *testing.T) {
	out, err := fdChild(t, "raise", 64).Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var soft, hard, want uint64
	var e string
	if _, err := fmt.Sscanf(string(out), "soft=%d hard=%d err=%s want_hard=%d", &soft, &hard, &e, &want); err != nil {
		t.Fatalf("child said %q: %v", out, err)
	}
	if e != "<nil>" || soft != want || hard != want {
		t.Errorf("after RaiseFileLimit from a soft limit of 64: %s; want soft = hard = %d", out, want)
	}
}
