package fleet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA is a throwaway certificate authority made with crypto/x509 (no
// openssl): TEST-ONLY, generated per test.
type testCA struct {
	t    testing.TB
	dir  string
	name string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// CAFile is the CA certificate (PEM).
	CAFile string
}

// certFiles is a certificate and its key on disk (PEM).
type certFiles struct{ Cert, Key string }

var certSerial = big.NewInt(time.Now().UnixNano())

func nextSerial() *big.Int {
	certSerial = new(big.Int).Add(certSerial, big.NewInt(1))
	return new(big.Int).Set(certSerial)
}

func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: "TEST-ONLY " + name, Organization: []string{"edgefleet tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{t: t, dir: dir, name: name, cert: cert, key: key, CAFile: filepath.Join(dir, name+"-ca.pem")}
	writePEM(t, ca.CAFile, "CERTIFICATE", der)
	return ca
}

// server issues a server certificate for 127.0.0.1, ::1 and localhost.
func (ca *testCA) server(file string) certFiles {
	return ca.issue(file, pkix.Name{CommonName: "localhost"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback})
}

// client issues a client certificate with the given CN and OUs (OU
// "operator" makes an operator).
func (ca *testCA) client(file, cn string, ou ...string) certFiles {
	return ca.issue(file, pkix.Name{CommonName: cn, OrganizationalUnit: ou}, x509.ExtKeyUsageClientAuth, nil, nil)
}

func (ca *testCA) issue(file string, subj pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) certFiles {
	t := ca.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      subj,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := certFiles{Cert: filepath.Join(ca.dir, file+".pem"), Key: filepath.Join(ca.dir, file+"-key.pem")}
	writePEM(t, f.Cert, "CERTIFICATE", der)
	writePEM(t, f.Key, "PRIVATE KEY", kder)
	return f
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// testPKI is the usual set: a CA, the broker's server certificate, two
// device certificates, an operator certificate, and a device certificate
// for dev-a from a foreign CA.
type testPKI struct {
	CA                     *testCA
	Server                 certFiles
	DevA, DevB, Operator   certFiles
	ForeignDevA            certFiles
	ForeignCA              *testCA
	OperatorWithoutOUAsDev certFiles // CN "ops-2", no OU: a device, not an operator
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, dir, "fleet")
	other := newTestCA(t, dir, "foreign")
	return &testPKI{
		CA:                     ca,
		Server:                 ca.server("server"),
		DevA:                   ca.client("dev-a", "dev-a"),
		DevB:                   ca.client("dev-b", "dev-b"),
		Operator:               ca.client("ops-1", "ops-1", RoleOperator),
		ForeignDevA:            other.client("foreign-dev-a", "dev-a"),
		ForeignCA:              other,
		OperatorWithoutOUAsDev: ca.client("ops-2", "ops-2"),
	}
}
