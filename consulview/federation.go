package consulview

import (
	"context"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sni"
)

// gatewaySet is the routable mesh gateways of one gateway service (or of
// one datacenter's federation state), those critical in the catalog (out
// of maintenance), and the newest raft index among all of its instances,
// healthy or not: the two sources of a datacenter's gateways are compared
// by it.
type gatewaySet struct {
	eps       []mesh.Endpoint
	unhealthy []mesh.Endpoint
	index     uint64
}

func gatewaySetOf(entries []*api.ServiceEntry) gatewaySet {
	var set gatewaySet
	for _, e := range entries {
		if e.Service == nil || e.Service.Kind != api.ServiceKindMeshGateway {
			continue
		}
		set.index = max(set.index, e.Service.ModifyIndex)
		ep, ok := endpointOf(e, false)
		switch {
		case ok:
			set.eps = append(set.eps, ep)
		case criticalOnly(e):
			set.unhealthy = append(set.unhealthy, ep)
		}
	}
	return set
}

// criticalOnly reports whether an instance that is not routable is out
// only because a check is critical: not in maintenance (service or node),
// and not weighted out. Such a gateway may be serving all the same (one
// just started, before the agent's first check), which a prober can tell.
func criticalOnly(e *api.ServiceEntry) bool {
	if w := e.Service.Weights; (w.Passing != 0 || w.Warning != 0) && w.Passing < 1 {
		return false
	}
	critical := false
	for _, ch := range e.Checks {
		if ch.Status == api.HealthMaint || strings.HasPrefix(ch.CheckID, serviceMaintenancePrefix) || ch.CheckID == nodeMaintenance {
			return false
		}
		critical = critical || ch.Status == api.HealthCritical
	}
	return critical
}

// Consul's maintenance checks (agent/agent.go: serviceMaintCheckID and
// structs.NodeMaint): critical checks an operator or a draining gateway
// adds to take an instance out on purpose.
const (
	serviceMaintenancePrefix = "_service_maintenance:"
	nodeMaintenance          = "_node_maintenance"
)

// federationStatesPath lists every datacenter's mesh gateways as the
// primary's federation states hold them, replicated to every datacenter:
// {"dc1": [CheckServiceNode...], ...}. It is an internal endpoint, the one
// Consul's proxycfg uses for a gateway with the consul-wan-federation meta.
const federationStatesPath = "/v1/internal/federation-states/mesh-gateways"

// federationStatesRetry is how long to wait before asking again while the
// datacenter does not support federation states yet (its servers are
// still electing a leader or catching up).
const federationStatesRetry = time.Second

// loadFederationStates reads the federation states' mesh gateways, by
// datacenter.
func (c *Source) loadFederationStates(ctx context.Context, index uint64) (uint64, error) {
	var out map[string][]*api.ServiceEntry
	meta, err := c.client.Raw().Query(federationStatesPath, &out, c.queryOptions(ctx, index))
	if err != nil {
		if strings.Contains(err.Error(), "Federation states are currently disabled") {
			// Consul's answer until every server supports them (and
			// before the first leader): nothing to route yet; ask again.
			select {
			case <-ctx.Done():
			case <-time.After(federationStatesRetry):
			}
			return 0, nil
		}
		return index, classify(callFederationStates, err)
	}
	if err := filtered(callFederationStates, meta); err != nil {
		return index, err
	}
	sets := make(map[string]gatewaySet, len(out))
	for dc, entries := range out {
		sets[dc] = gatewaySetOf(entries)
	}
	c.mu.Lock()
	c.state.fedGateways = sets
	c.publishLocked()
	c.mu.Unlock()
	return meta.LastIndex, nil
}

// mergeFederationStatesLocked puts, for each other datacenter, the
// federation state's gateways in v in place of the catalog's where the
// state's are newer (newest is the catalog's newest index by datacenter),
// as Consul's ConfigSnapshot.GetMeshGatewayEndpoints chooses: a datacenter
// the WAN pool does not list yet is known from its state alone, and a
// gateway that moved is found at its new address even while the old one
// no longer carries the RPC that would tell the catalog. c.mu is held.
func (c *Source) mergeFederationStatesLocked(v *mesh.View, newest map[string]uint64) {
	for dc, set := range c.state.fedGateways {
		if dc == c.state.datacenter || set.index <= newest[dc] {
			continue
		}
		l := mesh.Location{Datacenter: dc, Partition: tenancy.Default}
		if len(set.eps) == 0 {
			delete(v.Gateways, l)
		} else {
			v.Gateways[l] = set.eps
		}
		if len(set.unhealthy) == 0 {
			delete(v.UnhealthyGateways, l)
		} else {
			v.UnhealthyGateways[l] = set.unhealthy
		}
	}
}

// federationServers returns every local Consul server of the "consul"
// service's entries (read replicas too, as Consul's gateway routes them), by
// node name, at its LAN address and server RPC port.
func federationServers(entries []*api.ServiceEntry) []mesh.ConsulServer {
	out := make([]mesh.ConsulServer, 0, len(entries))
	for _, e := range entries {
		if e.Node == nil || e.Service == nil || e.Service.Port == 0 {
			continue
		}
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		out = append(out, mesh.ConsulServer{Node: e.Node.Node, Address: net.JoinHostPort(host, strconv.Itoa(e.Service.Port))})
	}
	return out
}

// normalDomain is a DNS domain as server names end in it: lower case,
// without a trailing dot, sni.DefaultDomain when empty.
func normalDomain(domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" {
		return sni.DefaultDomain
	}
	return domain
}
