package fleet

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

var edgefleetBin struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// buildEdgefleet builds cmd/edgefleet once per test binary (the Go build
// cache makes it a link step when nothing changed).
func buildEdgefleet(t *testing.T) string {
	t.Helper()
	edgefleetBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "edgefleet-fleet-cli-")
		if err != nil {
			edgefleetBin.err = err
			return
		}
		edgefleetBin.path = filepath.Join(dir, "edgefleet")
		cmd := exec.Command("go", "build", "-o", edgefleetBin.path, "./cmd/edgefleet")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		edgefleetBin.out, edgefleetBin.err = cmd.CombinedOutput()
	})
	if edgefleetBin.err != nil {
		t.Fatalf("go build ./cmd/edgefleet: %v\n%s", edgefleetBin.err, edgefleetBin.out)
	}
	return edgefleetBin.path
}

// TestTLSBrokerCLI runs the real `edgefleet broker` process with
// --tls-cert/--tls-key/--client-ca and checks the same certificate rules
// as TestTLSClientCertificates, then publishes with `edgefleet publish
// --ca --cert --key` and reads the fleet with `edgefleet status`.
func TestTLSBrokerCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds cmd/edgefleet")
	}
	bin := buildEdgefleet(t)
	pki := newTestPKI(t)
	data := t.TempDir()
	cmd := exec.Command(bin, "broker", "--listen", "127.0.0.1:0", "--data", data,
		"--tls-cert", pki.Server.Cert, "--tls-key", pki.Server.Key, "--client-ca", pki.CA.File)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuf
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("edgefleet broker stderr:\n%s", stderr.String())
		}
	})
	urlc := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		urlc <- strings.TrimSpace(line)
	}()
	var url string
	select {
	case url = <-urlc:
	case <-time.After(time.Minute):
		t.Fatalf("edgefleet broker printed no URL; stderr:\n%s", stderr.String())
	}
	if !strings.HasPrefix(url, "ssl://127.0.0.1:") {
		t.Fatalf("edgefleet broker printed %q, want ssl://127.0.0.1:PORT; stderr:\n%s", url, stderr.String())
	}
	if strings.Contains(stderr.String(), "WITHOUT authentication") {
		t.Fatalf("a broker with --client-ca says it runs without authentication:\n%s", stderr.String())
	}

	certMatrix(t, url, pki)

	// The operator commands' --ca/--cert/--key flags.
	dir := t.TempDir()
	r := makeBundle(t, dir, "cli", "2.0.0", 2, 9_000)
	pubText, _ := testKey.pub.MarshalText()
	pubPath := filepath.Join(dir, "TEST-ONLY.pub")
	writeFile(t, pubPath, pubText)
	run := func(args ...string) (string, error) {
		c := exec.Command(bin, args...)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	tlsFlags := []string{"--broker", url, "--ca", pki.CA.File, "--cert", pki.Operator.Cert, "--key", pki.Operator.Key}
	if out, err := run(append(append([]string{"publish"}, tlsFlags...), "--quiet", "--pub", pubPath, r.path)...); err != nil {
		t.Fatalf("edgefleet publish over TLS with an operator certificate: %v\n%s", err, out)
	}
	// A device certificate cannot publish: the broker drops the publishes
	// (the command then fails or the release never appears).
	devFlags := []string{"--broker", url, "--ca", pki.CA.File, "--cert", pki.DevB.Cert, "--key", pki.DevB.Key}
	r3 := makeBundle(t, dir, "cli", "3.0.0", 3, 9_000)
	run(append(append([]string{"publish"}, devFlags...), "--quiet", "--pub", pubPath, r3.path)...)
	// Without a client certificate the commands cannot connect.
	if out, err := run("status", "--broker", url, "--ca", pki.CA.File); err == nil {
		t.Errorf("edgefleet status without a client certificate succeeded:\n%s", out)
	}

	op := mustTLSDial(t, url, pki.CA.File, pki.Operator, "", "", "")
	rt, _ := protocol.ReleaseTopic("stable", "cli", "linux-amd64")
	snap, err := Snapshot(context.Background(), op, []string{rt})
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.ParseEnvelope(snap[rt])
	if err != nil {
		t.Fatalf("the release published by `edgefleet publish` over TLS: %v", err)
	}
	m, err := env.Open(r.kr)
	if err != nil || m.Version != "2.0.0" {
		t.Fatalf("the retained release is %v (%v), want 2.0.0 published by the operator certificate, not 3.0.0 by a device's", m, err)
	}
	out, err := run(append([]string{"status", "--json"}, tlsFlags...)...)
	if err != nil || !strings.Contains(out, `"device": "dev-a"`) {
		t.Fatalf("edgefleet status over TLS: %v\n%s", err, out)
	}
}

// syncBuf is safe for concurrent writers and a reading test.
type syncBuf = testkit.Buffer
