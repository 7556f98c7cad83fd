package testkit

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// MosquittoPath is the mosquitto executable (PATH, then /usr/sbin); when
// there is none it skips t loudly, saying that what did not run (e.g. "the
// Mosquitto TLS test").
func MosquittoPath(t testing.TB, what string) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("SKIPPED: mosquitto is not installed (scripts/test.sh installs it: apt-get install mosquitto); %s did not run", what)
		}
	}
	return bin
}

// FreePort is a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	issuedMu.Lock()
	defer issuedMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// The kernel may hand a closed port out again at once: never give
		// the same one twice in this process (a NATS node's MQTT port was
		// another node's route port once).
		if !issued[port] {
			issued[port] = true
			return port
		}
	}
	t.Fatal("no free loopback port that was not handed out already")
	return 0
}

var (
	issuedMu sync.Mutex
	issued   = map[int]bool{}
)

// StartMosquitto runs the mosquitto at bin (see MosquittoPath) with the
// configuration conf(port), port being a free loopback port, and returns
// "127.0.0.1:port" once it accepts connections. Running as root it adds
// "user root" (otherwise mosquitto drops to user mosquitto, which cannot
// read the test's files). The broker is killed when the test ends, and its
// output is logged when the test failed.
func StartMosquitto(t testing.TB, bin string, conf func(port int) string) string {
	t.Helper()
	port := FreePort(t)
	s := conf(port)
	if os.Geteuid() == 0 {
		s += "\nuser root\n"
	}
	cf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &Buffer{}
	cmd := exec.Command(bin, "-c", cf)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", log)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(Hang)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case werr := <-exited:
			exited <- werr // for the cleanup
			t.Fatalf("mosquitto exited (%v) before listening on %s:\n%s", werr, addr, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not start listening on %s: %v\n%s", addr, err, log)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Buffer is a bytes.Buffer safe for concurrent writers (a child's stdout
// and stderr, a logger) and a reading test at once. The zero value is
// ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
