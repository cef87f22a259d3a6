package gatewaycert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// listenerType is the type URL of Envoy's v3 listeners.
const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

// userAgent names this client to the agent. The agent checks the version
// of clients that call themselves envoy only.
const userAgent = "meshgate"

// watchXDS opens a delta ADS stream on conn as the proxy proxyID (the mesh
// gateway's service ID, registered with the agent behind conn), with token
// if it is not empty, and calls found with the gateway's certificate when
// the listeners first carry one and each time it changes. It returns when
// ctx ends (with ctx's error) or the stream fails.
//
// The agent adds the certificate only while the gateway serves an export
// to a peer whose protocol is http, http2 or grpc; until then found is not
// called.
func watchXDS(ctx context.Context, conn grpc.ClientConnInterface, proxyID, token string, found func(tls.Certificate)) error {
	if proxyID == "" {
		return errors.New("no proxy ID")
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-consul-token", token)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("opening the ADS stream: %w", err)
	}
	node := &corev3.Node{Id: proxyID, UserAgentName: userAgent}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: listenerType}); err != nil {
		return fmt.Errorf("subscribing to listeners: %w", err)
	}
	certs := map[string]*tls.Certificate{} // by listener name
	var current []byte                     // the reported certificate's leaf, DER
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the ADS stream of %q: %w", proxyID, err)
		}
		if resp.GetTypeUrl() != listenerType {
			continue
		}
		var nack error
		for _, r := range resp.GetResources() {
			cert, err := certOf(r)
			if err != nil {
				nack = fmt.Errorf("listener %q: %w", r.GetName(), err)
				continue
			}
			certs[r.GetName()] = cert
		}
		for _, name := range resp.GetRemovedResources() {
			delete(certs, name)
		}
		ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: listenerType, ResponseNonce: resp.GetNonce()}
		if nack != nil {
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		if err := stream.Send(ack); err != nil {
			return fmt.Errorf("acknowledging listeners: %w", err)
		}
		if cert := pick(certs); cert != nil && string(cert.Certificate[0]) != string(current) {
			current = cert.Certificate[0]
			found(*cert)
		}
	}
}

// pick returns one of certs that is not nil, preferring none in
// particular: every listener of a gateway carries the same leaf.
func pick(certs map[string]*tls.Certificate) *tls.Certificate {
	for _, c := range certs {
		if c != nil {
			return c
		}
	}
	return nil
}

// certOf returns the mesh gateway certificate in a listener resource's
// filter chains, or nil if it carries none.
func certOf(r *discoveryv3.Resource) (*tls.Certificate, error) {
	if r.GetResource() == nil {
		return nil, nil
	}
	var l listenerv3.Listener
	if err := r.GetResource().UnmarshalTo(&l); err != nil {
		return nil, err
	}
	for _, fc := range l.GetFilterChains() {
		ts := fc.GetTransportSocket().GetTypedConfig()
		if ts == nil {
			continue
		}
		var dtc tlsv3.DownstreamTlsContext
		if ts.UnmarshalTo(&dtc) != nil {
			continue // another transport socket
		}
		for _, tc := range dtc.GetCommonTlsContext().GetTlsCertificates() {
			chain, key := tc.GetCertificateChain().GetInlineString(), tc.GetPrivateKey().GetInlineString()
			if chain == "" || key == "" {
				continue
			}
			cert, err := tls.X509KeyPair([]byte(chain), []byte(key))
			if err != nil {
				return nil, fmt.Errorf("filter chain %q: %w", fc.GetName(), err)
			}
			if isGatewayIdentity(cert) {
				return &cert, nil
			}
		}
	}
	return nil, nil
}

// isGatewayIdentity reports whether cert's leaf names a mesh gateway:
// spiffe://<td>/gateway/mesh/dc/<dc>.
func isGatewayIdentity(cert tls.Certificate) bool {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return false
	}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" && strings.HasPrefix(u.Path, "/gateway/mesh/") {
			return true
		}
	}
	return false
}
