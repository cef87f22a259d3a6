package consulview

import (
	"context"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/registration"
)

// GatewayRegistration is registration.Gateway.
//
// Deprecated: use package registration. This alias goes in the next
// release.
type GatewayRegistration = registration.Gateway

// MetaWANFederation is registration.MetaWANFederation.
//
// Deprecated: use registration.MetaWANFederation.
const MetaWANFederation = registration.MetaWANFederation

// RegisterGateway is registration.Register, with the Registration's
// Deregister as the function it returns.
//
// Deprecated: use registration.Register. This function goes in the next
// release.
func RegisterGateway(ctx context.Context, client *api.Client, r GatewayRegistration) (deregister func() error, err error) {
	reg, err := registration.Register(ctx, client, r)
	if err != nil {
		return nil, err
	}
	return func() error { return reg.Deregister(context.Background()) }, nil
}

// GatewayService is registration.GatewayService.
//
// Deprecated: use registration.GatewayService.
func GatewayService(ctx context.Context, client *api.Client, id string) (*api.AgentService, error) {
	return registration.GatewayService(ctx, client, id)
}
