package testkit

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
	"sync/atomic"
	"testing"
	"time"
)

// CA is a throwaway certificate authority made with crypto/x509 (no
// openssl): TEST-ONLY, generated per call, valid from an hour ago for a
// day.
type CA struct {
	t    testing.TB
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// File is the CA certificate (PEM).
	File string
}

// Pair is a certificate and its private key on disk (PEM, PKCS#8).
type Pair struct{ Cert, Key string }

var serial atomic.Int64

func nextSerial() *big.Int {
	return big.NewInt(time.Now().UnixNano() + serial.Add(1))
}

// NewCA makes a CA named "TEST-ONLY name" and writes its certificate to
// dir/name-ca.pem; dir "" means a new t.TempDir(). Certificates it issues
// go to the same directory.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
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
	ca := &CA{t: t, dir: dir, cert: cert, key: key, File: filepath.Join(dir, name+"-ca.pem")}
	WritePEM(t, ca.File, "CERTIFICATE", der)
	return ca
}

// Server issues a server certificate (CN localhost) for 127.0.0.1, ::1
// and localhost, written to file.pem and file-key.pem.
func (ca *CA) Server(file string) Pair {
	ca.t.Helper()
	return ca.issue(file, pkix.Name{CommonName: "localhost"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback})
}

// Client issues a client certificate with common name cn and
// organizational units ou, written to file.pem and file-key.pem.
func (ca *CA) Client(file, cn string, ou ...string) Pair {
	ca.t.Helper()
	return ca.issue(file, pkix.Name{CommonName: cn, OrganizationalUnit: ou}, x509.ExtKeyUsageClientAuth, nil, nil)
}

func (ca *CA) issue(file string, subj pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) Pair {
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
	p := Pair{Cert: filepath.Join(ca.dir, file+".pem"), Key: filepath.Join(ca.dir, file+"-key.pem")}
	WritePEM(t, p.Cert, "CERTIFICATE", der)
	WritePEM(t, p.Key, "PRIVATE KEY", kder)
	return p
}

// WritePEM writes der as one PEM block of type typ to path (mode 0600).
func WritePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Dir is the directory the CA writes its files to.
func (ca *CA) Dir() string { return ca.dir }
