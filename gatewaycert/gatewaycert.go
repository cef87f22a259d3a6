package gatewaycert

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/sidecar"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Options says where a mesh gateway's own certificate is read.
type Options struct {
	// GRPCAddr is the agent's plaintext gRPC address (its ports.grpc, 8502
	// by convention), where it serves xDS to the proxies registered with
	// it. Required.
	GRPCAddr string
	// GatewayID is the mesh gateway's service ID, registered with that
	// agent (registration.Register). Required.
	GatewayID string
	// Token is the ACL token of the gateway, if ACLs are enabled: it needs
	// service:write on the gateway's service, as Envoy's does.
	Token string
}

// retryWait is how long Watch waits before it opens a failed stream again.
const retryWait = time.Second

// Watch is sidecar.WatchCerts for a mesh gateway's own identity,
// spiffe://<trust domain>/gateway/mesh/dc/<dc>: the identity with which
// Consul's gateway terminates a peer's connections to an exported service
// whose protocol is http, http2 or grpc, and with which it opens its own to
// the service. The agent's HTTP API does not issue that certificate; the
// agent gives it to the registered gateway over xDS only, so that is where
// it is read, and kept current as the agent renews it. The CA roots come
// from the HTTP API, as for sidecar.WatchCerts.
//
// The agent issues the certificate once the gateway serves such an export
// to a peer, so Certificate returns nil until then, and Err says why. It
// fails at once only if the roots cannot be read or opts is incomplete.
// Close the result to stop watching.
func Watch(ctx context.Context, client *api.Client, opts Options) (*sidecar.Certs, error) {
	if opts.GRPCAddr == "" || opts.GatewayID == "" {
		return nil, errors.New("gatewaycert: a gateway's certificate needs the agent's gRPC address and the gateway's service ID")
	}
	conn, err := grpc.NewClient(opts.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("gatewaycert: the agent's gRPC address %q: %w", opts.GRPCAddr, err)
	}
	pending := fmt.Errorf("gatewaycert: the agent has not yet given gateway %q its certificate: it does once the gateway serves an export to a peer whose protocol is http, http2 or grpc", opts.GatewayID)
	certs, err := sidecar.WatchCertsFrom(ctx, client, pending, func(ctx context.Context, set func(*tls.Certificate, error)) {
		defer conn.Close()
		for ctx.Err() == nil {
			err := watchXDS(ctx, conn, opts.GatewayID, opts.Token, func(cert tls.Certificate) { set(&cert, nil) })
			if ctx.Err() != nil {
				return
			}
			set(nil, fmt.Errorf("gatewaycert: reading gateway %q's certificate from the agent at %s: %w", opts.GatewayID, opts.GRPCAddr, err))
			select {
			case <-ctx.Done():
			case <-time.After(retryWait):
			}
		}
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return certs, nil
}
