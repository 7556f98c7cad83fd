package fleet

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

type testRelease struct {
	path    string
	kr      *protocol.Keyring
	payload []byte
	m       *protocol.Manifest
}

var testKey struct {
	pub  protocol.PublicKey
	priv protocol.PrivateKey
}

func init() {
	var err error
	testKey.pub, testKey.priv, err = protocol.GenerateKey()
	if err != nil {
		panic(err)
	}
}

// makeBundle writes a signed, unencoded bundle of size random bytes in 4 KiB
// chunks.
func makeBundle(t testing.TB, dir, app, version string, seq uint64, size int) testRelease {
	t.Helper()
	exe := make([]byte, size)
	rand.Read(exe)
	return makeBundleFrom(t, dir, app, version, seq, exe)
}

func makeBundleFrom(t testing.TB, dir, app, version string, seq uint64, exe []byte) testRelease {
	t.Helper()
	m, payload := testkit.Manifest(t, testkit.Spec{App: app, Version: version, Sequence: seq, Exe: exe,
		Target: testkit.Target{GOARCH: "amd64"}, Encoding: protocol.EncodingNone, ChunkSize: protocol.MinChunkSize, NoProbe: true,
		ELF: &protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}}) // exe is random bytes, not ELF
	path := filepath.Join(dir, fmt.Sprintf("%s_%s.efb", app, version))
	writeFile(t, path, testkit.Sign(t, m, payload, testKey.priv))
	return testRelease{path: path, kr: protocol.NewKeyring(testKey.pub), payload: exe, m: m}
}

func startEmbedded(t testing.TB, o BrokerOptions) *Broker {
	t.Helper()
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	o.Logf = t.Logf
	b, err := StartBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// startMosquitto runs a real mosquitto with docs/mosquitto's configuration
// and ACL on free loopback ports; users maps name → password. It returns
// the operator listener's URL (the configuration's loopback listener).
func startMosquitto(t testing.TB, users map[string]string) string {
	t.Helper()
	return startMosquittoFleet(t, users, false).opURL
}

// mosquittoFleet is a running docs/mosquitto broker: opURL is its loopback
// operator listener, devURL (ssl://) its device listener, whose certificate
// and client certificates ca issues.
type mosquittoFleet struct {
	opURL, devURL string
	ca            *testkit.CA
}

// startMosquittoFleet is startMosquitto with both listeners; certAuth
// uncomments the configuration's client-certificate lines on the device
// listener.
func startMosquittoFleet(t testing.TB, users map[string]string, certAuth bool) mosquittoFleet {
	t.Helper()
	return startMosquittoACL(t, users, certAuth, "../docs/mosquitto/edgefleet.acl")
}

// startMosquittoACL is startMosquittoFleet with another ACL file of
// docs/mosquitto (aclFile, relative to this package).
func startMosquittoACL(t testing.TB, users map[string]string, certAuth bool, aclFile string) mosquittoFleet {
	t.Helper()
	bin := testkit.MosquittoPath(t, "the Mosquitto half of the broker tests")
	passwdBin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skipf("SKIPPED: mosquitto_passwd is not installed (scripts/test.sh installs the mosquitto package)")
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	first := true
	for name, pass := range users {
		args := []string{"-b", pw, name, pass}
		if first {
			args = append([]string{"-c"}, args...)
			first = false
		}
		if out, err := exec.Command(passwdBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
		}
	}
	conf, err := os.ReadFile("../docs/mosquitto/mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	acl, err := filepath.Abs(aclFile)
	if err != nil {
		t.Fatal(err)
	}
	ca := testkit.NewCA(t, "", "mosquitto")
	srv := ca.Server("broker")
	devPort := testkit.FreePort(t)
	addr := testkit.StartMosquitto(t, bin, func(port int) string {
		s := string(conf)
		repl := [][2]string{
			{"password_file /etc/mosquitto/edgefleet.passwd", "password_file " + pw},
			{"acl_file /etc/mosquitto/edgefleet.acl", "acl_file " + acl},
			{"listener 1883 127.0.0.1", fmt.Sprintf("listener %d 127.0.0.1", port)},
			{"listener 8883", fmt.Sprintf("listener %d 127.0.0.1", devPort)},
			{"certfile /etc/mosquitto/certs/broker.crt", "certfile " + srv.Cert},
			{"keyfile  /etc/mosquitto/certs/broker.key", "keyfile " + srv.Key},
			{"persistence_location /var/lib/mosquitto/", "persistence_location " + dir + "/"},
		}
		if certAuth {
			repl = append(repl,
				[2]string{"#cafile /etc/mosquitto/certs/ca.crt", "cafile " + ca.File},
				[2]string{"#require_certificate true", "require_certificate true"},
				[2]string{"#use_identity_as_username true", "use_identity_as_username true"})
		}
		for _, r := range repl {
			if !strings.Contains(s, r[0]) {
				t.Fatalf("docs/mosquitto/mosquitto.conf no longer contains %q; update the test", r[0])
			}
			s = strings.Replace(s, r[0], r[1], 1)
		}
		return s
	})
	return mosquittoFleet{opURL: "tcp://" + addr, devURL: fmt.Sprintf("ssl://127.0.0.1:%d", devPort), ca: ca}
}

func connect(t testing.TB, url, user, pass, clientID string) paho.Client {
	t.Helper()
	c, err := Connect(context.Background(), ClientOptions{Broker: url, Username: user, Password: pass, ClientID: clientID})
	if err != nil {
		t.Fatalf("connect as %s/%s: %v", user, clientID, err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func writeUsers(t testing.TB, dir string, users map[string][2]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("users:\n")
	for name, v := range users {
		h, err := HashPassword(v[0])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  - name: %s\n    password_hash: %q\n    role: %s\n", name, h, v[1])
	}
	p := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func writeFile(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
