package gatewaycert

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/sidecar"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Options says where a mesh gateway's own certificate is read.
type Options struct {
	// GRPCAddr is the agent's gRPC address, where it serves xDS to the
	// proxies registered with it, written as CONSUL_GRPC_ADDR is:
	// https://host:port is its TLS port (ports.grpc_tls, 8503 by
	// convention, the one production agents open); http://host:port or a
	// bare host:port its plaintext port (ports.grpc, 8502 on dev agents,
	// closed on others). Required.
	GRPCAddr string
	// TLS configures the client side of an https:// GRPCAddr: the roots
	// that verify the agent's certificate (CONSUL_GRPC_CACERT, else the
	// HTTP API's CONSUL_CACERT) and a client certificate where the agent's
	// tls.grpc.verify_incoming asks for one. Nil: the system's roots, no
	// client certificate. Unused for a plaintext address. Watch does not
	// modify it.
	TLS *tls.Config
	// GatewayID is the mesh gateway's service ID, registered with that
	// agent (registration.Register). Required.
	GatewayID string
	// Token is the ACL token of the gateway, if ACLs are enabled: it needs
	// service:write on the gateway's service, as Envoy's does.
	Token string
}

// dialTarget returns the host:port of addr, a CONSUL_GRPC_ADDR-style
// address, and the credentials to dial it with: TLS for https://,
// none for http:// or no scheme.
func dialTarget(addr string, cfg *tls.Config) (string, credentials.TransportCredentials, error) {
	scheme, hostport, ok := strings.Cut(addr, "://")
	if !ok {
		scheme, hostport = "http", addr
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return "", nil, fmt.Errorf("gatewaycert: the agent's gRPC address %q: want https://host:port (TLS) or host:port (plaintext): %w", addr, err)
	}
	switch strings.ToLower(scheme) {
	case "https":
		c := &tls.Config{}
		if cfg != nil {
			c = cfg.Clone()
		}
		c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
		return hostport, credentials.NewTLS(c), nil
	case "http":
		return hostport, insecure.NewCredentials(), nil
	}
	return "", nil, fmt.Errorf("gatewaycert: the agent's gRPC address %q: scheme %q: want https (TLS) or http (plaintext)", addr, scheme)
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
	target, creds, err := dialTarget(opts.GRPCAddr, opts.TLS)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
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
