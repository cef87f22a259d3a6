package consulview

import (
	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
)

// AgentInstances returns the proxies registered with the agent client talks
// to (connect-proxy services with their upstreams), for planning.
func AgentInstances(client *api.Client) ([]mesh.Instance, error) {
	services, err := client.Agent().Services()
	if err != nil {
		return nil, classify(call("listing the agent's services", "GET /v1/agent/services", agenterr.ReadServices), err)
	}
	var out []mesh.Instance
	for _, s := range services {
		if s.Kind != api.ServiceKindConnectProxy || s.Proxy == nil {
			continue
		}
		out = append(out, mesh.Instance{Service: s.Proxy.DestinationServiceName, Name: s.Service,
			Namespace: s.Namespace, Partition: s.Partition, Proxy: s.Proxy, Origin: "consul agent service " + s.ID})
	}
	return out, nil
}

// UnmergeCentralConfig undoes, as far as it can be known, Consul's merging
// of central config into a proxy registration. The agent returns proxies with
// proxy-defaults and service-defaults already copied into the instance's and
// each upstream's mesh_gateway, which hides the layer that decided. A value
// equal to what the lower layers alone give is taken to come from them and
// cleared, so planning reports their layer as the source. The mode, and so
// the plan, is the same either way; only a value written explicitly and equal
// to the central one is attributed to the central layer.
func UnmergeCentralConfig(v *mesh.View, inst mesh.Instance) mesh.Instance {
	if inst.Proxy == nil {
		return inst
	}
	proxy := *inst.Proxy
	sd, pd := v.ServiceDefaultsFor(inst.Service, inst.Namespace, inst.Partition), v.ProxyDefaults
	central := modes.Decide(modes.ForUpstream(api.Upstream{}, nil, sd, pd))
	if central.Mode != "" && proxy.MeshGateway.Mode == central.Mode {
		proxy.MeshGateway.Mode = ""
	}
	proxy.Upstreams = append([]api.Upstream(nil), proxy.Upstreams...)
	for i, up := range proxy.Upstreams {
		below := up
		below.MeshGateway.Mode = ""
		d := modes.Decide(modes.ForUpstream(below, &proxy, sd, pd))
		if d.Mode != "" && up.MeshGateway.Mode == d.Mode {
			proxy.Upstreams[i].MeshGateway.Mode = ""
		}
	}
	inst.Proxy = &proxy
	return inst
}
