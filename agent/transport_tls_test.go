package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

func tlsOperator(t testing.TB, o fleet.ClientOptions) paho.Client {
	t.Helper()
	c, err := fleet.Connect(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// TestMQTTTLSClientCertificate: the embedded broker with TLS and
// --client-ca; a real agent (in-process daemon) configured with broker
// url ssl://…, ca, cert, key receives and installs a release the operator
// published with its own certificate, and reports its status (ACL by CN).
// A device whose certificate comes from another CA never gets in.
func TestMQTTTLSClientCertificate(t *testing.T) {
	ca := testkit.NewCA(t, "", "fleet")
	srv := ca.Server("server")
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		TLSCert: srv.Cert, TLSKey: srv.Key, ClientCA: ca.File, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	url := b.URL()
	if !strings.HasPrefix(url, "ssl://") {
		t.Fatalf("broker URL %s", url)
	}

	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	opCert := ca.Client("ops", "ops-1", fleet.RoleOperator)
	op := tlsOperator(t, fleet.ClientOptions{Broker: url, CA: ca.File, Cert: opCert.Cert, Key: opCert.Key})
	view := fleetView(t, op)
	publish(t, op, k, v1, "")

	devCert := ca.Client("dev-tls", "dev-tls")
	cfg := mqttConfig(t, k, "dev-tls", url)
	cfg.Broker = &BrokerConfig{URL: url, Channel: "stable", CA: ca.File, Cert: devCert.Cert, Key: devCert.Key}
	dev := startMQTTDevice(t, cfg)
	defer dev.stop()

	// An impostor: dev-evil's certificate from a foreign CA.
	foreign := testkit.NewCA(t, "", "foreign")
	evilCert := foreign.Client("dev-evil", "dev-evil")
	evilCfg := mqttConfig(t, k, "dev-evil", url)
	evilCfg.Broker = &BrokerConfig{URL: url, Channel: "stable", CA: ca.File, Cert: evilCert.Cert, Key: evilCert.Key}
	evil, evilLog := startMQTTDeviceLogged(t, evilCfg)
	defer evil.stop()

	eventually(t, "dev-tls commits 1.0.0 received over TLS", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	eventually(t, "dev-tls's status (written under its CN) shows 1.0.0", func() bool {
		return view.Converged("hello", "1.0.0", 1, StateCommitted)
	})
	for _, d := range view.Devices() {
		if d.Device != "dev-tls" {
			t.Errorf("a status from %s reached the broker", d.Device)
		}
	}
	if n := evil.stats().ChunksReceived.Load(); n != 0 || installedIs(evil, "1.0.0", StateCommitted) {
		t.Errorf("a device with a foreign certificate received %d chunks", n)
	}
	// The refused device says why in its log (a field engineer's only
	// clue: it cannot report a status).
	eventually(t, "dev-evil logs why it cannot connect", func() bool {
		return strings.Contains(evilLog.String(), "mqtt: cannot connect to "+url)
	})
	if n := strings.Count(evilLog.String(), "cannot connect"); n > 2 {
		t.Errorf("the same connection failure was logged %d times; once per reason is enough:\n%s", n, evilLog)
	}
}

// startMQTTDeviceLogged is startMQTTDevice that also keeps the device's log.
func startMQTTDeviceLogged(t testing.TB, cfg *Config) (*mqttDevice, *syncBuffer) {
	t.Helper()
	log := &syncBuffer{}
	logf := func(f string, a ...any) {
		fmt.Fprintf(log, f+"\n", a...)
		t.Logf(cfg.DeviceID+": "+f, a...)
	}
	a, err := Open(cfg, Options{Logf: logf})
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDaemon(cfg, a, DaemonOptions{Logf: logf, Version: "test", MinBackoff: 50 * time.Millisecond, StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dev := &mqttDevice{id: cfg.DeviceID, cfg: cfg, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { dev.done <- d.Run(ctx) }()
	return dev, log
}

// TestMQTTTLSUsersFile: TLS with server authentication only; the agent
// logs in with broker.username/password and trusts the broker by
// broker.ca.
func TestMQTTTLSUsersFile(t *testing.T) {
	ca := testkit.NewCA(t, "", "fleet")
	srv := ca.Server("server")
	dir := t.TempDir()
	var users strings.Builder
	users.WriteString("users:\n")
	for _, u := range [][3]string{{"operator", "operator-secret", fleet.RoleOperator}, {"dev-pw", "dev-pw-secret", fleet.RoleDevice}} {
		h, err := fleet.HashPassword(u[1])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&users, "  - name: %s\n    password_hash: %q\n    role: %s\n", u[0], h, u[2])
	}
	usersPath := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(usersPath, []byte(users.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		TLSCert: srv.Cert, TLSKey: srv.Key, Users: usersPath, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	url := b.URL()

	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	op := tlsOperator(t, fleet.ClientOptions{Broker: url, CA: ca.File, Username: "operator", Password: "operator-secret"})
	view := fleetView(t, op)
	publish(t, op, k, v1, "dev-pw") // assigned to the device

	cfg := mqttConfig(t, k, "dev-pw", url)
	cfg.Broker = &BrokerConfig{URL: url, Channel: "stable", CA: ca.File, Username: "dev-pw", Password: "dev-pw-secret"}
	dev := startMQTTDevice(t, cfg)
	defer dev.stop()
	eventually(t, "dev-pw commits its assigned 1.0.0 over TLS", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	eventually(t, "dev-pw's status shows 1.0.0", func() bool { return view.Converged("hello", "1.0.0", 1, StateCommitted) })

	// broker.password_file instead of a password in the config: the same
	// device credentials from a private file, over the same real broker.
	pwFile := filepath.Join(t.TempDir(), "broker.pw")
	if err := os.WriteFile(pwFile, []byte("dev-pw-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dev.stop()
	cfg2 := mqttConfig(t, k, "dev-pw", url)
	cfg2.DataDir = cfg.DataDir
	cfg2.Apps = cfg.Apps
	cfg2.Broker = &BrokerConfig{URL: url, Channel: "stable", CA: ca.File, Username: "dev-pw", PasswordFile: pwFile}
	if err := cfg2.Validate(); err != nil {
		t.Fatal(err)
	}
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	publish(t, op, k, v2, "dev-pw")
	dev2 := startMQTTDevice(t, cfg2)
	defer dev2.stop()
	eventually(t, "dev-pw, with its password in password_file, commits 2.0.0", func() bool { return installedIs(dev2, "2.0.0", StateCommitted) })
}

// TestMQTTTLSMosquitto: the same with a real Mosquitto that requires
// client certificates and uses the CN as the user name
// (require_certificate, use_identity_as_username) with docs/mosquitto's
// ACL: the operator's certificate has CN "operator", the device's its id.
func TestMQTTTLSMosquitto(t *testing.T) {
	mqttTLSMosquitto(t, "../docs/mosquitto/edgefleet.acl", "pi-tls")
}

// TestMQTTTLSMosquittoPerDeviceACL: the same with
// docs/mosquitto/edgefleet-per-device.acl as written: pi-017, whose block
// grants channel stable and app hello only, gets everything a real agent
// needs (release, chunks, key set topic, own desired, status, sync).
// fleet.TestACLPerDeviceMosquitto shows what the file denies.
func TestMQTTTLSMosquittoPerDeviceACL(t *testing.T) {
	mqttTLSMosquitto(t, "../docs/mosquitto/edgefleet-per-device.acl", "pi-017")
}

func mqttTLSMosquitto(t *testing.T, aclFile, device string) {
	bin := testkit.MosquittoPath(t, "the Mosquitto TLS test")
	ca := testkit.NewCA(t, "", "fleet")
	srv := ca.Server("server")
	acl, err := filepath.Abs(aclFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := testkit.StartMosquitto(t, bin, func(port int) string {
		return fmt.Sprintf(`per_listener_settings false
allow_anonymous false
acl_file %s
max_packet_size 1114112
max_queued_messages 1000
listener %d 127.0.0.1
certfile %s
keyfile %s
cafile %s
require_certificate true
use_identity_as_username true
`, acl, port, srv.Cert, srv.Key, ca.File)
	})
	url := "ssl://" + addr

	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	opCert := ca.Client("operator", "operator")
	op := tlsOperator(t, fleet.ClientOptions{Broker: url, CA: ca.File, Cert: opCert.Cert, Key: opCert.Key})
	view := fleetView(t, op)
	publish(t, op, k, v1, "")
	if _, err := fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url, CA: ca.File, ConnectTimeout: 5 * time.Second}); err == nil {
		t.Error("Mosquitto with require_certificate accepted a client without a certificate")
	}

	devCert := ca.Client(device, device)
	cfg := mqttConfig(t, k, device, url)
	cfg.Broker = &BrokerConfig{URL: url, Channel: "stable", CA: ca.File, Cert: devCert.Cert, Key: devCert.Key}
	dev := startMQTTDevice(t, cfg)
	defer dev.stop()
	eventually(t, device+" commits 1.0.0 from Mosquitto over TLS", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	eventually(t, device+"'s status (user name = CN) shows 1.0.0", func() bool { return view.Converged("hello", "1.0.0", 1, StateCommitted) })
	// An assignment on its own desired topic reaches it too.
	v2 := k.bundle(spec{Version: "2.0.0", Sequence: 2})
	publish(t, op, k, v2, device)
	eventually(t, device+" commits 2.0.0 assigned on its desired topic", func() bool { return installedIs(dev, "2.0.0", StateCommitted) })
}

// TestMQTTTLSCertificateProvisionedLater: a device whose certificate is
// not there yet says so and keeps trying; once the files appear it
// connects and installs. A tcp:// URL with TLS settings is refused rather
// than sending everything in clear.
func TestMQTTTLSCertificateProvisionedLater(t *testing.T) {
	shortRetries(t)
	ca := testkit.NewCA(t, "", "fleet")
	srv := ca.Server("server")
	b, err := fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		TLSCert: srv.Cert, TLSKey: srv.Key, ClientCA: ca.File, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	opCert := ca.Client("ops", "ops-1", fleet.RoleOperator)
	op := tlsOperator(t, fleet.ClientOptions{Broker: b.URL(), CA: ca.File, Cert: opCert.Cert, Key: opCert.Key})
	publish(t, op, k, v1, "")

	cfg := mqttConfig(t, k, "dev-late", b.URL())
	late := testkit.Pair{Cert: filepath.Join(ca.Dir(), "dev-late.pem"), Key: filepath.Join(ca.Dir(), "dev-late-key.pem")}
	cfg.Broker = &BrokerConfig{URL: b.URL(), Channel: "stable", CA: ca.File, Cert: late.Cert, Key: late.Key}
	dev, log := startMQTTDeviceLogged(t, cfg)
	defer dev.stop()
	eventually(t, "the device says its certificate is missing", func() bool {
		return strings.Contains(log.String(), "mqtt: cannot start: broker.cert/key") && strings.Contains(log.String(), "trying again in")
	})
	ca.Client("dev-late", "dev-late") // provisioning writes the files
	eventually(t, "the device installs once its certificate exists", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })

	// A tcp:// URL with TLS settings would send the password in clear
	// (paho ignores TLS for tcp://): refused when the config loads.
	plain := mqttConfig(t, k, "dev-plain", "tcp://"+b.Addr())
	plain.Broker.CA = ca.File
	if err := plain.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "use ssl://") {
		t.Fatalf("tcp:// with TLS settings: %v, want a config error pointing to ssl://", err)
	}
}
