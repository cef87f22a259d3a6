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
	"sync"
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

	clientOnce            sync.Once
	clientCert, clientKey string
	clientErr             error
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
	if err := writePEM(t.caFile, "CERTIFICATE", der); err != nil {
		tb.Fatal(err)
	}
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
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "server." + dc + ".consul"},
		DNSNames:    []string{"server." + dc + ".consul", node + ".server." + dc + ".consul", "*.server." + dc + ".consul", "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	certFile, keyFile, err := t.issue(tmpl, node)
	if err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

// ClientFiles returns the files of a client certificate of the CA (as
// "consul tls cert create -client" makes), for programs that talk to
// agents that verify incoming HTTPS connections; the same each call.
func (t *TLS) ClientFiles(tb testing.TB) (certFile, keyFile string) {
	tb.Helper()
	t.clientOnce.Do(func() {
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "client.consul"}, DNSNames: []string{"client.consul", "localhost"},
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		t.clientCert, t.clientKey, t.clientErr = t.issue(tmpl, "client")
	})
	if t.clientErr != nil {
		tb.Fatal(t.clientErr)
	}
	return t.clientCert, t.clientKey
}

// issue signs tmpl, valid from an hour ago for a day, with a fresh key, and
// writes the certificate and the key as name.pem and name-key.pem.
func (t *TLS) issue(tmpl *x509.Certificate, name string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl.SerialNumber = big.NewInt(t.serial.Add(1))
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, t.ca, &key.PublicKey, t.key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile = filepath.Join(t.dir, name+".pem")
	keyFile = filepath.Join(t.dir, name+"-key.pem")
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return certFile, keyFile, writePEM(keyFile, "EC PRIVATE KEY", keyDER)
}

// agentConfig is the tls block of a server agent of dc named node; with
// httpsOnly, HTTPS also verifies its clients' certificates (gRPC TLS does
// not: cluster peers and xDS clients present none, as Consul expects).
func (t *TLS) agentConfig(tb testing.TB, dc, node string, httpsOnly bool) string {
	cert, key := t.serverFiles(tb, dc, node)
	https := ""
	if httpsOnly {
		https = "  https {\n    verify_incoming = true\n  }\n"
	}
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
%s}
`, t.caFile, cert, key, https)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}
