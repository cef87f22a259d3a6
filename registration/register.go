package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
)

// ErrPermissionDenied wraps Consul's 403 answers, with the permission a
// gateway's token needs. It is consulview.ErrPermissionDenied too.
var ErrPermissionDenied = agenterr.ErrPermissionDenied

// ErrAgentUnreachable wraps a failed request to an agent that does not
// answer. It is consulview.ErrAgentUnreachable too.
var ErrAgentUnreachable = agenterr.ErrAgentUnreachable

// classify wraps err as ErrPermissionDenied or ErrAgentUnreachable where it
// is one of those.
func classify(what string, err error) error { return agenterr.Classify("registration", what, err) }

// Gateway describes a mesh gateway to register with the local Consul
// agent.
type Gateway struct {
	// Name is the service name; empty means "mesh-gateway". ID defaults to
	// Name.
	Name string
	ID   string
	// Address is the gateway's LAN listener, "host:port".
	Address string
	// CheckAddress is what the TCP health check dials; empty means Address.
	// A gateway that does not listen on Address (envoy_gateway_no_default_bind)
	// names one of its listeners here.
	CheckAddress string
	// WANAddress is what other datacenters dial, "host:port"; empty means
	// Address.
	WANAddress string
	// CheckInterval is the TCP health check's interval; zero means 10 s.
	CheckInterval time.Duration
	// DeregisterCriticalAfter removes the gateway from the catalog once its
	// check has been critical this long, so a gateway that died without
	// deregistering leaves; zero means 6 h, the default of Consul's own
	// "consul connect envoy -register".
	DeregisterCriticalAfter time.Duration
	// Meta is copied into the registration.
	Meta map[string]string
	// ExposeServers registers the gateway as one that carries WAN
	// federation between Consul's servers, as "consul connect envoy
	// -gateway=mesh -register -expose-servers" does: Meta gets
	// MetaWANFederation = "1", which Consul's servers look for when they
	// pick gateways to federate through. Run the gateway's Source with
	// Options.WANFederation and route with a routing.FederationRouter.
	ExposeServers bool
	// ProxyConfig is the registration's Proxy.Config: options such as those
	// package proxyconfig reads, over the proxy-defaults entry's.
	ProxyConfig map[string]any
}

// MetaWANFederation is the service meta key that marks a mesh gateway
// for WAN federation through mesh gateways (Consul's
// structs.MetaWANFederationKey), with the value "1".
const MetaWANFederation = "consul-wan-federation"

// Register registers the gateway with the agent client talks to, as
// Consul's own gateways are: Kind mesh-gateway, lan and wan tagged addresses,
// and a TCP check on its listener that deregisters the gateway once critical
// for DeregisterCriticalAfter. The token needs service:write on the
// gateway's name. It returns a function that deregisters it.
func Register(ctx context.Context, client *api.Client, r Gateway) (deregister func() error, err error) {
	reg, err := r.registration()
	if err != nil {
		return nil, err
	}
	opts := api.ServiceRegisterOpts{}.WithContext(ctx)
	if err := client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return nil, classify("registering mesh gateway "+reg.Name, err)
	}
	return func() error {
		if err := client.Agent().ServiceDeregister(reg.ID); err != nil {
			return classify("deregistering mesh gateway "+reg.Name, err)
		}
		return nil
	}, nil
}

// registration is what Register sends to the agent.
func (r Gateway) registration() (*api.AgentServiceRegistration, error) {
	if r.Name == "" {
		r.Name = "mesh-gateway"
	}
	if r.ID == "" {
		r.ID = r.Name
	}
	if r.WANAddress == "" {
		r.WANAddress = r.Address
	}
	if r.CheckAddress == "" {
		r.CheckAddress = r.Address
	}
	if r.CheckInterval <= 0 {
		r.CheckInterval = 10 * time.Second
	}
	if r.DeregisterCriticalAfter <= 0 {
		r.DeregisterCriticalAfter = 6 * time.Hour
	}
	lan, err := serviceAddress(r.Address)
	if err != nil {
		return nil, fmt.Errorf("registration: gateway address: %w", err)
	}
	wan, err := serviceAddress(r.WANAddress)
	if err != nil {
		return nil, fmt.Errorf("registration: gateway WAN address: %w", err)
	}
	meta := r.Meta
	if r.ExposeServers {
		meta = make(map[string]string, len(r.Meta)+1)
		for k, v := range r.Meta {
			meta[k] = v
		}
		meta[MetaWANFederation] = "1"
	}
	var proxy *api.AgentServiceConnectProxyConfig
	if len(r.ProxyConfig) > 0 {
		proxy = &api.AgentServiceConnectProxyConfig{Config: r.ProxyConfig}
	}
	return &api.AgentServiceRegistration{
		Kind:            api.ServiceKindMeshGateway,
		ID:              r.ID,
		Name:            r.Name,
		Address:         lan.Address,
		Port:            lan.Port,
		TaggedAddresses: map[string]api.ServiceAddress{"lan": lan, "wan": wan},
		Meta:            meta,
		Proxy:           proxy,
		Check: &api.AgentServiceCheck{
			Name:                           string(api.ServiceKindMeshGateway) + " listening",
			TCP:                            r.CheckAddress,
			Interval:                       r.CheckInterval.String(),
			Timeout:                        "5s",
			DeregisterCriticalServiceAfter: r.DeregisterCriticalAfter.String(),
		},
	}, nil
}

// ExposesServers reports whether svc is registered as a mesh gateway that
// carries WAN federation (Meta[MetaWANFederation] is "1").
func ExposesServers(svc *api.AgentService) bool {
	return svc != nil && svc.Meta[MetaWANFederation] == "1"
}

// GatewayService returns the mesh gateway registered with the agent client
// talks to under id, as the agent sees it: its Proxy.Config is the
// registration's over the proxy-defaults entry's, the configuration
// Consul's own gateway runs with (read it with proxyconfig.ParseGateway).
// It is an error if the agent has no such service or it is not a mesh
// gateway.
func GatewayService(ctx context.Context, client *api.Client, id string) (*api.AgentService, error) {
	svc, _, err := client.Agent().Service(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if se := (api.StatusError{}); errors.As(err, &se) && se.Code == 404 {
			return nil, fmt.Errorf("registration: the agent has no service with ID %q", id)
		}
		return nil, classify("reading gateway service "+id, err)
	}
	if svc == nil {
		return nil, fmt.Errorf("registration: the agent has no service with ID %q", id)
	}
	if svc.Kind != api.ServiceKindMeshGateway {
		kind := string(svc.Kind)
		if kind == "" {
			kind = "typical"
		}
		return nil, fmt.Errorf("registration: service %q is a %s service, not a %s", id, kind, api.ServiceKindMeshGateway)
	}
	return svc, nil
}

// TaggedAddresses returns svc's tagged addresses as "host:port" by tag,
// leaving out those without a port.
func TaggedAddresses(svc *api.AgentService) map[string]string {
	out := make(map[string]string, len(svc.TaggedAddresses))
	for tag, a := range svc.TaggedAddresses {
		if a.Port > 0 {
			out[tag] = net.JoinHostPort(a.Address, strconv.Itoa(a.Port))
		}
	}
	return out
}

func serviceAddress(hostport string) (api.ServiceAddress, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return api.ServiceAddress{}, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return api.ServiceAddress{}, fmt.Errorf("port %q out of range", port)
	}
	return api.ServiceAddress{Address: host, Port: p}, nil
}
