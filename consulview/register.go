package consulview

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// GatewayRegistration describes a mesh gateway to register with the local
// Consul agent.
type GatewayRegistration struct {
	// Name is the service name; empty means "mesh-gateway". ID defaults to
	// Name.
	Name string
	ID   string
	// Address is the gateway's LAN listener, "host:port"; the health check
	// dials it.
	Address string
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
}

// RegisterGateway registers the gateway with the agent client talks to, as
// Consul's own gateways are: Kind mesh-gateway, lan and wan tagged addresses,
// and a TCP check on its listener that deregisters the gateway once critical
// for DeregisterCriticalAfter. The token needs service:write on the
// gateway's name. It returns a function that deregisters it.
func RegisterGateway(ctx context.Context, client *api.Client, r GatewayRegistration) (deregister func() error, err error) {
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

// registration is what RegisterGateway sends to the agent.
func (r GatewayRegistration) registration() (*api.AgentServiceRegistration, error) {
	if r.Name == "" {
		r.Name = "mesh-gateway"
	}
	if r.ID == "" {
		r.ID = r.Name
	}
	if r.WANAddress == "" {
		r.WANAddress = r.Address
	}
	if r.CheckInterval <= 0 {
		r.CheckInterval = 10 * time.Second
	}
	if r.DeregisterCriticalAfter <= 0 {
		r.DeregisterCriticalAfter = 6 * time.Hour
	}
	lan, err := serviceAddress(r.Address)
	if err != nil {
		return nil, fmt.Errorf("consulview: gateway address: %w", err)
	}
	wan, err := serviceAddress(r.WANAddress)
	if err != nil {
		return nil, fmt.Errorf("consulview: gateway WAN address: %w", err)
	}
	return &api.AgentServiceRegistration{
		Kind:            api.ServiceKindMeshGateway,
		ID:              r.ID,
		Name:            r.Name,
		Address:         lan.Address,
		Port:            lan.Port,
		TaggedAddresses: map[string]api.ServiceAddress{"lan": lan, "wan": wan},
		Meta:            r.Meta,
		Check: &api.AgentServiceCheck{
			Name:                           string(api.ServiceKindMeshGateway) + " listening",
			TCP:                            r.Address,
			Interval:                       r.CheckInterval.String(),
			Timeout:                        "5s",
			DeregisterCriticalServiceAfter: r.DeregisterCriticalAfter.String(),
		},
	}, nil
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
