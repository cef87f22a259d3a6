package registration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
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

// ErrEnterpriseOnly wraps a Consul CE agent's refusal of a namespace or a
// partition. It is consulview.ErrEnterpriseOnly too.
var ErrEnterpriseOnly = agenterr.ErrEnterpriseOnly

// classify wraps err, the failure of the request of what at endpoint,
// which needs rules, as an *agenterr.PermissionError (ErrPermissionDenied),
// ErrEnterpriseOnly or ErrAgentUnreachable where it is one of those.
func classify(what, endpoint string, err error, rules ...agenterr.Rule) error {
	return agenterr.Classify("registration", agenterr.Call{What: what, Endpoint: endpoint, Rules: rules}, err)
}

// DefaultName is the service name a gateway registers as when none is
// given: Consul's own default for mesh gateways.
const DefaultName = "mesh-gateway"

// MetaInstance is the service meta key under which a Registration marks
// the agent's registration as its own, with a value unique to it: an
// instance removes or puts into maintenance only a registration that still
// carries its own value, so several instances (or an old and a new process
// handing a socket over) never remove each other's.
const MetaInstance = "meshgate-instance"

// ErrIDInUse is Register's error when another instance that is alive
// (its checks passing or warning) holds the service ID on the agent.
var ErrIDInUse = errors.New("registration: the service ID is another instance's")

// ErrReplaced is Deregister's and Maintenance's error when the agent's
// registration under the ID is no longer this instance's: another one
// registered it since (a restart or a hand-over). Nothing was changed.
var ErrReplaced = errors.New("registration: another instance has registered the service ID since")

// Gateway describes a mesh gateway to register with the local Consul
// agent, with the fields of "consul connect envoy -gateway=mesh -register"
// (named after its flags where they have one).
type Gateway struct {
	// Name is the service name (-service); empty means DefaultName.
	Name string
	// ID is the service ID (-proxy-id), one per instance: empty means Name,
	// as Consul's command does. Several gateways on one agent need one
	// each.
	ID string
	// Address is the advertised LAN address, "host:port" (-address): the
	// service address and the lan tagged address. An empty host (":8443")
	// registers no service address, so that the catalog gives the node's
	// address, as Consul's command does without -address; Advertise
	// derives it from where the gateway listens and -address. It is never
	// a wildcard: Advertise turns one into the node's address.
	Address string
	// CheckAddress is what the TCP health check dials. Empty means
	// Address, or 127.0.0.1 at its port when Address has no host (the
	// gateway runs beside the agent, as Consul's command assumes). A
	// gateway that does not listen on Address (envoy_gateway_no_default_bind)
	// names one of its listeners here.
	CheckAddress string
	// WANAddress is what other datacenters and peers dial, "host:port"
	// (-wan-address): the wan tagged address. Empty means none, Consul's
	// default: the catalog then gives them the service address (or the
	// node's).
	WANAddress string
	// BindAddresses are the listeners of -bind-address, by name, each
	// "host:port": the registration's Proxy.Config gets
	// envoy_gateway_no_default_bind and envoy_gateway_bind_addresses, as
	// Consul's command writes them, over ProxyConfig's.
	BindAddresses map[string]string
	// CheckInterval is the TCP health check's interval; zero means 10 s.
	CheckInterval time.Duration
	// DeregisterCriticalAfter removes the gateway from the catalog once its
	// check has been critical this long (-deregister-after-critical), so a
	// gateway that died without deregistering leaves; zero means 6 h, the
	// default of Consul's own "consul connect envoy -register".
	DeregisterCriticalAfter time.Duration
	// Meta is copied into the registration (with MetaInstance added).
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
	// Logger hears when Register takes over a registration another
	// instance left (at the same address, or critical); nil discards.
	Logger *slog.Logger
}

// MetaWANFederation is the service meta key that marks a mesh gateway
// for WAN federation through mesh gateways (Consul's
// structs.MetaWANFederationKey), with the value "1".
const MetaWANFederation = "consul-wan-federation"

// Registration is a gateway this process registered with the agent
// (Register): its ID, and the steps that take it out, which touch the
// agent's registration only while it is still this instance's. Its methods
// may be called from several goroutines.
type Registration struct {
	client   *api.Client
	instance string

	mu  sync.Mutex
	reg *api.AgentServiceRegistration
}

// Register registers the gateway with the agent client talks to, as
// Consul's own gateways are: Kind mesh-gateway, the lan (and, when given,
// wan) tagged addresses, and a TCP check on its listener, passing from the
// start (a gateway registers once it listens), that deregisters the
// gateway once critical for DeregisterCriticalAfter. The token needs
// service:write on the gateway's name (PUT /v1/agent/service/register),
// which also lets it read the registration back.
//
// An ID the agent already has is taken over when it is this gateway's
// (the same address: a restart) or its checks are critical or in
// maintenance (an instance that died or drains; g.Logger hears of it); an
// ID held by another instance that is alive is refused with ErrIDInUse:
// several instances on one agent need an ID each.
func Register(ctx context.Context, client *api.Client, g Gateway) (*Registration, error) {
	r := &Registration{client: client, instance: newInstance()}
	if err := r.Update(ctx, g); err != nil {
		return nil, err
	}
	return r, nil
}

// newInstance returns a value unique to one Registration.
func newInstance() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ID returns the registration's service ID.
func (r *Registration) ID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reg.ID
}

// Update registers g in place of what r registered, under the same ID (a
// moved check, new addresses), with the same checks as Register.
func (r *Registration) Update(ctx context.Context, g Gateway) error {
	reg, err := g.registration()
	if err != nil {
		return err
	}
	reg.Meta[MetaInstance] = r.instance
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reg != nil && r.reg.ID != reg.ID {
		return fmt.Errorf("registration: Update keeps the service ID %q; %q is another registration", r.reg.ID, reg.ID)
	}
	if err := r.claim(ctx, reg, g.Logger); err != nil {
		return err
	}
	if err := r.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return classify("registering mesh gateway "+reg.ID, "PUT /v1/agent/service/register", err, agenterr.WriteService(reg.Name))
	}
	r.reg = reg
	return nil
}

// claim reports whether the agent's registration under reg's ID, if any,
// may be replaced by reg (see Register). r.mu is held.
func (r *Registration) claim(ctx context.Context, reg *api.AgentServiceRegistration, log *slog.Logger) error {
	have, err := r.current(ctx, reg.ID)
	if err != nil || have == nil || have.Meta[MetaInstance] == r.instance {
		return err
	}
	at := net.JoinHostPort(have.Address, strconv.Itoa(have.Port))
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if have.Address == reg.Address && have.Port == reg.Port {
		log.Info("registration: taking over the registration of a previous instance at the same address", "id", reg.ID, "address", at)
		return nil
	}
	status, info, err := r.client.Agent().AgentHealthServiceByIDOpts(reg.ID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return classify("reading the health of the service registered as "+reg.ID, "GET /v1/agent/health/service/id/"+reg.ID, err, agenterr.ReadServices)
	}
	if info != nil && info.AggregatedStatus != "" {
		status = info.AggregatedStatus
	}
	if status != api.HealthPassing && status != api.HealthWarning {
		log.Warn("registration: taking over a registration another instance left", "id", reg.ID, "its_address", at, "its_status", status)
		return nil
	}
	return fmt.Errorf("%w: service ID %q is registered on this agent by an instance at %s whose checks are %s: give this instance its own ID (-proxy-id)",
		ErrIDInUse, reg.ID, at, status)
}

// current returns the agent's registration under id, nil if it has none.
func (r *Registration) current(ctx context.Context, id string) (*api.AgentService, error) {
	svc, _, err := r.client.Agent().Service(id, (&api.QueryOptions{}).WithContext(ctx))
	if se := (api.StatusError{}); errors.As(err, &se) && se.Code == 404 {
		return nil, nil
	}
	if err != nil {
		return nil, classify("reading the service registered as "+id, "GET /v1/agent/service/"+id, err, agenterr.ReadServices)
	}
	return svc, nil
}

// mine returns r's registration if the agent's is still this instance's,
// nil if the agent has none; ErrReplaced if another instance's.
func (r *Registration) mine(ctx context.Context) (*api.AgentServiceRegistration, error) {
	r.mu.Lock()
	reg := r.reg
	r.mu.Unlock()
	have, err := r.current(ctx, reg.ID)
	switch {
	case err != nil || have == nil:
		return nil, err
	case have.Meta[MetaInstance] != r.instance:
		return nil, fmt.Errorf("%w: %q (now at %s)", ErrReplaced, reg.ID, net.JoinHostPort(have.Address, strconv.Itoa(have.Port)))
	}
	return reg, nil
}

// Maintenance puts the registration into maintenance (enable; reason is
// shown in Consul) or out of it: while in maintenance its check
// "_service_maintenance:<id>" is critical, so sidecars and other gateways
// stop sending to it as soon as they see the catalog change, while it still
// serves (PUT /v1/agent/service/maintenance/<id>, service:write). It changes
// nothing and returns ErrReplaced when the registration is another
// instance's now; nil when the agent has none.
func (r *Registration) Maintenance(ctx context.Context, enable bool, reason string) error {
	reg, err := r.mine(ctx)
	if err != nil || reg == nil {
		return err
	}
	q := (&api.QueryOptions{}).WithContext(ctx)
	if enable {
		err = r.client.Agent().EnableServiceMaintenanceOpts(reg.ID, reason, q)
	} else {
		err = r.client.Agent().DisableServiceMaintenanceOpts(reg.ID, q)
	}
	if err != nil {
		return classify("setting the maintenance of "+reg.ID, "PUT /v1/agent/service/maintenance/"+reg.ID, err, agenterr.WriteService(reg.Name))
	}
	return nil
}

// Deregister removes the registration from the agent
// (PUT /v1/agent/service/deregister/<id>, service:write). It removes nothing
// and returns ErrReplaced when the registration is another instance's now
// (a restart or a hand-over registered it since); nil when the agent has
// none.
func (r *Registration) Deregister(ctx context.Context) error {
	reg, err := r.mine(ctx)
	if err != nil || reg == nil {
		return err
	}
	if err := r.client.Agent().ServiceDeregisterOpts(reg.ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return classify("deregistering mesh gateway "+reg.ID, "PUT /v1/agent/service/deregister/"+reg.ID, err, agenterr.WriteService(reg.Name))
	}
	return nil
}

// registration is what Register sends to the agent, without MetaInstance.
func (r Gateway) registration() (*api.AgentServiceRegistration, error) {
	if r.Name == "" {
		r.Name = DefaultName
	}
	if r.ID == "" {
		r.ID = r.Name
	}
	if r.CheckInterval <= 0 {
		r.CheckInterval = 10 * time.Second
	}
	if r.DeregisterCriticalAfter <= 0 {
		r.DeregisterCriticalAfter = 6 * time.Hour
	}
	lan, err := serviceAddress(r.Address)
	if err != nil {
		return nil, fmt.Errorf("registration: gateway address %q: %w", r.Address, err)
	}
	if ip := net.ParseIP(lan.Address); ip != nil && ip.IsUnspecified() {
		return nil, fmt.Errorf("registration: gateway address %q is a wildcard, which nobody can dial: advertise an address of this host, or none (%q) for the node's", r.Address, net.JoinHostPort("", strconv.Itoa(lan.Port)))
	}
	tagged := map[string]api.ServiceAddress{}
	if lan.Address != "" {
		tagged["lan"] = lan
	}
	if r.WANAddress != "" {
		wan, err := serviceAddress(r.WANAddress)
		if err != nil || wan.Address == "" {
			return nil, fmt.Errorf("registration: gateway WAN address %q: want host:port%s", r.WANAddress, errSuffix(err))
		}
		tagged["wan"] = wan
	}
	if r.CheckAddress == "" {
		host := lan.Address
		if host == "" {
			host = "127.0.0.1"
		}
		r.CheckAddress = net.JoinHostPort(host, strconv.Itoa(lan.Port))
	}
	meta := make(map[string]string, len(r.Meta)+2)
	for k, v := range r.Meta {
		meta[k] = v
	}
	if r.ExposeServers {
		meta[MetaWANFederation] = "1"
	}
	var proxy *api.AgentServiceConnectProxyConfig
	if len(r.ProxyConfig) > 0 || len(r.BindAddresses) > 0 {
		config := make(map[string]any, len(r.ProxyConfig)+2)
		for k, v := range r.ProxyConfig {
			config[k] = v
		}
		if len(r.BindAddresses) > 0 {
			binds := make(map[string]any, len(r.BindAddresses))
			for name, addr := range r.BindAddresses {
				a, err := serviceAddress(addr)
				if err != nil || name == "" {
					return nil, fmt.Errorf("registration: bind address %s=%s: want NAME=host:port%s", name, addr, errSuffix(err))
				}
				binds[name] = map[string]any{"Address": a.Address, "Port": a.Port}
			}
			config["envoy_gateway_no_default_bind"] = true
			config["envoy_gateway_bind_addresses"] = binds
		}
		proxy = &api.AgentServiceConnectProxyConfig{Config: config}
	}
	return &api.AgentServiceRegistration{
		Kind:            api.ServiceKindMeshGateway,
		ID:              r.ID,
		Name:            r.Name,
		Address:         lan.Address,
		Port:            lan.Port,
		TaggedAddresses: tagged,
		Meta:            meta,
		Proxy:           proxy,
		Check: &api.AgentServiceCheck{
			Name:                           string(api.ServiceKindMeshGateway) + " listening",
			TCP:                            r.CheckAddress,
			Interval:                       r.CheckInterval.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: r.DeregisterCriticalAfter.String(),
		},
	}, nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
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
		return nil, classify("reading gateway service "+id, "GET /v1/agent/service/"+id, err, agenterr.ReadServices)
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
