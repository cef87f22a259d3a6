package consultest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TLS is a throwaway CA for Consul agents' own TLS (the RPC between
// servers, not Connect's CA), issuing server certificates as "consul tls
// cert create -server -dc <dc> -additional-dnsname '*.server.<dc>.consul'"
// does. Create it with NewTLS and give it to each agent's Options.
type TLS struct {
	dir    string
	caFile string
	ca     *x509.Certificate
	key    *ecdsa.PrivateKey
	serial atomic.Int64
}

// NewTLS makes a CA, valid for a day, in a directory of the test's.
func NewTLS(tb testing.TB) *TLS {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshgate test agent CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	t := &TLS{dir: tb.TempDir(), ca: ca, key: key}
	t.serial.Store(1)
	t.caFile = filepath.Join(t.dir, "ca.pem")
	writePEM(tb, t.caFile, "CERTIFICATE", der)
	return t
}

// CAFile is the CA certificate's PEM file.
func (t *TLS) CAFile() string { return t.caFile }

// CertPool returns a pool holding the CA, to verify the agents'
// certificates with.
func (t *TLS) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(t.ca)
	return pool
}

// serverFiles issues a server certificate for node in dc and writes it and
// its key; it returns their files.
func (t *TLS) serverFiles(tb testing.TB, dc, node string) (certFile, keyFile string) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(t.serial.Add(1)), Subject: pkix.Name{CommonName: "server." + dc + ".consul"},
		DNSNames:    []string{"server." + dc + ".consul", node + ".server." + dc + ".consul", "*.server." + dc + ".consul", "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, t.ca, &key.PublicKey, t.key)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	certFile = filepath.Join(t.dir, node+".pem")
	keyFile = filepath.Join(t.dir, node+"-key.pem")
	writePEM(tb, certFile, "CERTIFICATE", der)
	writePEM(tb, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// agentConfig is the tls block of a server agent of dc named node.
func (t *TLS) agentConfig(tb testing.TB, dc, node string) string {
	cert, key := t.serverFiles(tb, dc, node)
	return fmt.Sprintf(`tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_outgoing = true
  }
  internal_rpc {
    verify_incoming = true
    verify_server_hostname = true
  }
}
`, t.caFile, cert, key)
}

func writePEM(tb testing.TB, path, kind string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}
