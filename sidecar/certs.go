package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/problems"
)

// Certs is a service's mesh identity as the local Consul agent issues it:
// its Connect leaf certificate and the cluster's CA roots, kept current by
// blocking queries as the agent renews the leaf or the CA rotates.
type Certs struct {
	client  *api.Client
	service string
	leaf    atomic.Pointer[tls.Certificate]
	roots   atomic.Pointer[roots]
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errMu   sync.Mutex
	errs    [2]error // each watch's last error: the leaf's, the roots'
}

// roots is one version of the CA roots.
type roots struct {
	pool        *x509.CertPool
	trustDomain string
}

// retryWait is how long a watch waits after a failed query.
const retryWait = time.Second

// WatchCerts fetches service's leaf certificate and the CA roots from the
// agent, then keeps both current until ctx ends or Close is called. It
// fails if either cannot be had at once.
func WatchCerts(ctx context.Context, client *api.Client, service string) (*Certs, error) {
	if service == "" {
		return nil, errors.New("sidecar: no service name for the leaf certificate")
	}
	c := &Certs{client: client, service: service}
	ctx, c.cancel = context.WithCancel(ctx)
	leafIndex, err := c.loadLeaf(ctx, 0)
	if err != nil {
		c.cancel()
		return nil, err
	}
	rootsIndex, err := c.loadRoots(ctx, 0)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.wg.Add(2)
	go c.watch(ctx, &c.errs[0], leafIndex, c.loadLeaf)
	go c.watch(ctx, &c.errs[1], rootsIndex, c.loadRoots)
	return c, nil
}

// LeafSource keeps a leaf certificate coming for WatchCertsFrom: it runs
// until ctx ends, calling set with each new certificate and a nil error, or
// with a nil certificate and the error while it cannot have one (the last
// certificate stays in use, and Err reports the error).
type LeafSource func(ctx context.Context, set func(*tls.Certificate, error))

// WatchCertsFrom is WatchCerts with the leaf certificate from leaf rather
// than the agent's HTTP API (package gatewaycert gives a mesh gateway's own
// this way); the CA roots come from client and are kept current as for
// WatchCerts. Certificate returns nil until leaf first gives one, and Err
// returns pending until then. It fails at once only if the roots cannot be
// read. Close stops leaf and waits for it to return.
func WatchCertsFrom(ctx context.Context, client *api.Client, pending error, leaf LeafSource) (*Certs, error) {
	c := &Certs{client: client}
	ctx, c.cancel = context.WithCancel(ctx)
	rootsIndex, err := c.loadRoots(ctx, 0)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.errs[0] = pending
	c.wg.Add(2)
	go c.watch(ctx, &c.errs[1], rootsIndex, c.loadRoots)
	go func() {
		defer c.wg.Done()
		leaf(ctx, func(cert *tls.Certificate, err error) {
			if cert != nil {
				c.leaf.Store(cert)
			}
			c.errMu.Lock()
			c.errs[0] = err
			c.errMu.Unlock()
		})
	}()
	return c, nil
}

// Close stops watching.
func (c *Certs) Close() {
	c.cancel()
	c.wg.Wait()
}

// Certificate returns the current leaf certificate with its key.
func (c *Certs) Certificate() *tls.Certificate { return c.leaf.Load() }

// Roots returns the current CA roots.
func (c *Certs) Roots() *x509.CertPool { return c.roots.Load().pool }

// TrustDomain returns the cluster's trust domain, "<cluster-id>.consul".
func (c *Certs) TrustDomain() string { return c.roots.Load().trustDomain }

// Err returns the last error of each watch that is failing, or nil once
// both have recovered.
func (c *Certs) Err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return problems.Join(c.errs[0], c.errs[1])
}

// watch runs load until ctx ends; *lastErr is its last error.
func (c *Certs) watch(ctx context.Context, lastErr *error, index uint64, load func(context.Context, uint64) (uint64, error)) {
	defer c.wg.Done()
	keepLoading(ctx, index, load, func(err error) {
		c.errMu.Lock()
		*lastErr = err
		c.errMu.Unlock()
	})
}

// keepLoading runs a blocking query, load, from index until ctx ends,
// giving each one's error to report; after a failure it waits retryWait,
// and it starts over from index 0 when the index goes backwards, as
// Consul advises.
func keepLoading(ctx context.Context, index uint64, load func(context.Context, uint64) (uint64, error), report func(error)) {
	for ctx.Err() == nil {
		next, err := load(ctx, index)
		report(err)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(retryWait):
			}
			continue
		}
		if next < index {
			next = 0
		}
		index = next
	}
}

func (c *Certs) loadLeaf(ctx context.Context, index uint64) (uint64, error) {
	leaf, meta, err := c.client.Agent().ConnectCALeaf(c.service, (&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
	if err != nil {
		return index, fmt.Errorf("sidecar: reading the leaf certificate of %q: %w", c.service, err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return index, fmt.Errorf("sidecar: the leaf certificate of %q: %w", c.service, err)
	}
	c.leaf.Store(&cert)
	return meta.LastIndex, nil
}

func (c *Certs) loadRoots(ctx context.Context, index uint64) (uint64, error) {
	list, meta, err := c.client.Agent().ConnectCARoots((&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
	if err != nil {
		return index, fmt.Errorf("sidecar: reading the CA roots: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range list.Roots {
		if !addPEM(pool, r.RootCertPEM) {
			return index, fmt.Errorf("sidecar: CA root %q is not a PEM certificate", r.ID)
		}
	}
	if list.TrustDomain == "" {
		return index, errors.New("sidecar: the agent names no trust domain")
	}
	c.roots.Store(&roots{pool: pool, trustDomain: list.TrustDomain})
	return meta.LastIndex, nil
}

// addPEM adds every certificate of text to pool and reports whether there
// was one.
func addPEM(pool *x509.CertPool, text string) bool {
	added := false
	rest := []byte(text)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return added
		}
		if cert, err := x509.ParseCertificate(b.Bytes); err == nil {
			pool.AddCert(cert)
			added = true
		}
	}
}

// ServerTLSConfig is the server side of mTLS for a Connect-native service:
// it presents the current leaf and accepts only clients whose certificate
// chains to the current roots. Which services may connect (Consul's
// intentions) is left to the caller, with the client's SPIFFE ID in
// tls.ConnectionState.PeerCertificates[0].URIs; AuthorizingServerTLSConfig
// asks the agent.
func (c *Certs) ServerTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.Certificate(), nil },
		ClientAuth:     tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := verifyChain("client", raw, c.Roots())
			return err
		},
	}
}

// StaticCerts is an identity that never changes: a leaf with its key, the
// CA roots and the trust domain, for programs and tests that have no Consul
// agent to ask. Close does nothing.
func StaticCerts(leaf tls.Certificate, pool *x509.CertPool, trustDomain string) *Certs {
	c := &Certs{cancel: func() {}}
	c.leaf.Store(&leaf)
	c.roots.Store(&roots{pool: pool, trustDomain: trustDomain})
	return c
}
