package sidecartest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"path"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/sidecar"
)

// CA is a throwaway Connect CA for demos and tests without a Consul agent:
// a root with the trust domain's SPIFFE ID, and leaf certificates with
// services' SPIFFE IDs, as Consul's built-in CA issues them. It issues
// leaves under one root.
type CA struct {
	TrustDomain string
	root        *x509.Certificate
	key         *ecdsa.PrivateKey
	serial      atomic.Int64
}

// NewCA makes a CA for trustDomain, valid for a day.
func NewCA(trustDomain string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshgate demo CA"},
		URIs: []*url.URL{{Scheme: "spiffe", Host: trustDomain}}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{TrustDomain: trustDomain, root: root, key: key}
	ca.serial.Store(1)
	return ca, nil
}

// Certs issues the identity id (its trust domain is the CA's) a leaf
// certificate and returns it with the CA's root as sidecar.Certs.
func (ca *CA) Certs(id sidecar.Identity) (*sidecar.Certs, error) {
	id.TrustDomain = ca.TrustDomain
	leaf, err := ca.Leaf(id.String())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.root)
	return sidecar.StaticCerts(leaf, pool, ca.TrustDomain), nil
}

// Leaf issues a leaf certificate naming spiffeID, any SPIFFE ID (a
// service's, or a mesh gateway's: spiffe://<td>/gateway/mesh/dc/<dc>).
func (ca *CA) Leaf(spiffeID string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	u, err := url.Parse(spiffeID)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial.Add(1)), Subject: pkix.Name{CommonName: path.Base(u.Path)}, URIs: []*url.URL{u},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// RootPEM returns the CA's root certificate, PEM, as a peering's
// PeerCAPems lists it.
func (ca *CA) RootPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw}))
}
