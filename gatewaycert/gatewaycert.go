package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/xdsleaf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// GatewayCertsOptions says where a mesh gateway's own certificate is read.
type GatewayCertsOptions struct {
	// GRPCAddr is the agent's plaintext gRPC address (its ports.grpc, 8502
	// by convention), where it serves xDS to the proxies registered with
	// it. Required.
	GRPCAddr string
	// GatewayID is the mesh gateway's service ID, registered with that
	// agent (consulview.Register). Required.
	GatewayID string
	// Token is the ACL token of the gateway, if ACLs are enabled: it needs
	// service:write on the gateway's service, as Envoy's does.
	Token string
}

// WatchGatewayCerts is WatchCerts for a mesh gateway's own identity,
// spiffe://<trust domain>/gateway/mesh/dc/<dc>: the identity with which
// Consul's gateway terminates a peer's connections to an exported service
// whose protocol is http, http2 or grpc, and with which it opens its own to
// the service. The agent's HTTP API does not issue that certificate; the
// agent gives it to the registered gateway over xDS only, so that is where
// it is read, and kept current as the agent renews it. The CA roots come
// from the HTTP API, as for WatchCerts.
//
// The agent issues the certificate once the gateway serves such an export
// to a peer, so Certificate returns nil until then, and Err says why. It
// fails at once only if the roots cannot be read or opts is incomplete.
func WatchGatewayCerts(ctx context.Context, client *api.Client, opts GatewayCertsOptions) (*Certs, error) {
	if opts.GRPCAddr == "" || opts.GatewayID == "" {
		return nil, errors.New("sidecar: a gateway's certificate needs the agent's gRPC address and the gateway's service ID")
	}
	conn, err := grpc.NewClient(opts.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("sidecar: the agent's gRPC address %q: %w", opts.GRPCAddr, err)
	}
	c := &Certs{client: client, service: opts.GatewayID}
	ctx, cancel := context.WithCancel(ctx)
	c.cancel = func() { cancel(); conn.Close() }
	rootsIndex, err := c.loadRoots(ctx, 0)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.setErr(0, fmt.Errorf("sidecar: the agent has not yet given gateway %q its certificate: it does once the gateway serves an export to a peer whose protocol is http, http2 or grpc", opts.GatewayID))
	c.wg.Add(2)
	go c.watch(ctx, &c.errs[1], rootsIndex, c.loadRoots)
	go func() {
		defer c.wg.Done()
		for ctx.Err() == nil {
			err := xdsleaf.Watch(ctx, conn, opts.GatewayID, opts.Token, func(cert tls.Certificate) {
				c.leaf.Store(&cert)
				c.setErr(0, nil)
			})
			if ctx.Err() != nil {
				return
			}
			c.setErr(0, fmt.Errorf("sidecar: reading gateway %q's certificate from the agent at %s: %w", opts.GatewayID, opts.GRPCAddr, err))
			select {
			case <-ctx.Done():
			case <-time.After(retryWait):
			}
		}
	}()
	return c, nil
}

// setErr records the last error of watch i (0 the leaf's, 1 the roots').
func (c *Certs) setErr(i int, err error) {
	c.errMu.Lock()
	c.errs[i] = err
	c.errMu.Unlock()
}
