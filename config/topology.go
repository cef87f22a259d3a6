package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/meshgate/meshgate/internal/decode"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/mesh"
)

// topologyDoc is a topology document as written (see the package
// comment): the View's fields, with rows for its maps.
type topologyDoc struct {
	Datacenter  string
	Partition   string
	TrustDomain string
	Services    []serviceRow
	Gateways    []gatewayRow
	Peers       []peerRow
	Servers     []string
	// WANFederation decodes straight into the model's type.
	WANFederation *mesh.Federation `alias:"wan_federation"`
}

// serviceRow is one service's mesh endpoints in one datacenter (and
// subset): mesh.ServiceKey's fields, the endpoints' LAN and WAN addresses
// and weights in the same order, and the LAN addresses of its instances
// with a critical check (View.UnhealthyServices, for the panic threshold).
type serviceRow struct {
	Name              string
	Namespace         string
	Partition         string
	Datacenter        string
	Subset            string
	Addresses         []string
	WANAddresses      []string `alias:"wan_addresses"`
	Weights           []int
	CriticalAddresses []string `alias:"critical_addresses"`
}

// gatewayRow is the mesh gateways of one datacenter and partition.
type gatewayRow struct {
	Datacenter   string
	Partition    string
	Addresses    []string
	WANAddresses []string `alias:"wan_addresses"`
}

// peerRow is mesh.Peer with its imports written "name" or
// "namespace/name" (see splitImport).
type peerRow struct {
	Name            string
	TrustDomain     string `alias:"trust_domain"`
	NameAtPeer      string `alias:"name_at_peer"`
	Gateways        []string
	ServerName      string   `alias:"server_name"`
	ServerAddresses []string `alias:"server_addresses"`
	Imports         []string
}

func (s *Set) addTopology(d *decode.Decoder, n *decode.Node) {
	var t topologyDoc
	before := problems.Count(d.Err())
	d.Decode(n, &t, keyTopology)
	if problems.Count(d.Err()) != before {
		return
	}
	check := func(what string, addrs []string) {
		for _, a := range addrs {
			if err := checkHostPort(a); err != nil {
				d.Errorf(n.Line, keyTopology, "%s: %v", what, err)
			}
		}
	}
	if s.Topology == nil {
		s.Topology = &mesh.View{}
	}
	v := s.Topology
	merge := func(field string, dst *string, src string) {
		if src != "" && *dst != "" && *dst != src {
			d.Errorf(n.Line, keyTopology, "%s %q disagrees with %q from an earlier topology document", field, src, *dst)
		} else if src != "" {
			*dst = src
		}
	}
	merge("datacenter", &v.Datacenter, t.Datacenter)
	merge("partition", &v.Partition, t.Partition)
	merge("trust_domain", &v.TrustDomain, t.TrustDomain)

	for _, sv := range t.Services {
		if sv.Name == "" {
			d.Errorf(n.Line, keyTopology, "a service without a name")
		}
		check("service "+sv.Name, append(append(sv.Addresses, sv.WANAddresses...), sv.CriticalAddresses...))
		k := mesh.ServiceKey{Name: sv.Name, Namespace: sv.Namespace, Partition: sv.Partition, Datacenter: sv.Datacenter}
		eps := endpoints(sv.Addresses, sv.WANAddresses)
		switch {
		case len(sv.Weights) > 0 && len(sv.Weights) != len(eps):
			d.Errorf(n.Line, keyTopology, "service %q: %d weights for %d endpoints: give one weight per address, or none", sv.Name, len(sv.Weights), len(eps))
		default:
			for i, w := range sv.Weights {
				if w < 1 {
					d.Errorf(n.Line, keyTopology, "service %q: weight %d of %s: want 1 or more (Consul sends no traffic to an instance whose weight is 0: list it in critical_addresses)", sv.Name, w, eps[i].BestAddress(false))
				}
				eps[i].Weight = w
			}
		}
		critical := endpoints(sv.CriticalAddresses, nil)
		if sv.Subset == "" {
			if v.Services == nil {
				v.Services = map[mesh.ServiceKey][]mesh.Endpoint{}
			}
			v.Services[k] = append(v.Services[k], eps...)
			addEndpoints(&v.UnhealthyServices, k, critical)
			continue
		}
		if v.Subsets == nil {
			v.Subsets = map[mesh.ServiceKey]map[string][]mesh.Endpoint{}
		}
		if v.Subsets[k] == nil {
			v.Subsets[k] = map[string][]mesh.Endpoint{}
		}
		v.Subsets[k][sv.Subset] = append(v.Subsets[k][sv.Subset], eps...)
		addSubsetEndpoints(&v.UnhealthySubsets, k, sv.Subset, critical)
	}
	for _, g := range t.Gateways {
		if g.Datacenter == "" {
			d.Errorf(n.Line, keyTopology, "gateways without a datacenter")
		}
		check("gateways of "+g.Datacenter, append(g.Addresses, g.WANAddresses...))
		if v.Gateways == nil {
			v.Gateways = map[mesh.Location][]mesh.Endpoint{}
		}
		l := mesh.Location{Datacenter: g.Datacenter, Partition: g.Partition}
		v.Gateways[l] = append(v.Gateways[l], endpoints(g.Addresses, g.WANAddresses)...)
	}
	for _, p := range t.Peers {
		if p.Name == "" {
			d.Errorf(n.Line, keyTopology, "a peer without a name")
		}
		check("peer "+p.Name, append(p.Gateways, p.ServerAddresses...))
		if (p.ServerName == "") != (len(p.ServerAddresses) == 0) {
			d.Errorf(n.Line, keyTopology, "peer %q: server_name and server_addresses go together", p.Name)
		}
		if len(p.Imports) > 0 && (p.TrustDomain == "" || p.NameAtPeer == "" || len(p.Gateways) == 0) {
			d.Errorf(n.Line, keyTopology, "peer %q: imports need trust_domain, name_at_peer and gateways", p.Name)
		}
		peer := mesh.Peer{Name: p.Name, TrustDomain: p.TrustDomain, NameAtPeer: p.NameAtPeer,
			Gateways: p.Gateways, ServerName: p.ServerName, ServerAddresses: p.ServerAddresses}
		for _, im := range p.Imports {
			ns, name, err := splitImport(im)
			if err != nil {
				d.Errorf(n.Line, keyTopology, "peer %q: %v", p.Name, err)
				continue
			}
			peer.Imports = append(peer.Imports, mesh.ImportedService{Name: name, Namespace: ns})
		}
		if _, dup := v.Peers[p.Name]; dup {
			d.Errorf(n.Line, keyTopology, "peer %q listed twice", p.Name)
			continue
		}
		if v.Peers == nil {
			v.Peers = map[string]mesh.Peer{}
		}
		v.Peers[p.Name] = peer
	}
	check("servers", t.Servers)
	v.Servers = append(v.Servers, t.Servers...)
	if f := t.WANFederation; f != nil {
		seen := map[string]bool{}
		if v.Federation != nil {
			for _, srv := range v.Federation.Servers {
				seen[strings.ToLower(srv.Node)] = true
			}
		}
		for _, srv := range f.Servers {
			node := strings.ToLower(srv.Node)
			switch {
			case srv.Node == "":
				d.Errorf(n.Line, keyTopology, "wan_federation: a server without a node name")
			case seen[node]:
				d.Errorf(n.Line, keyTopology, "wan_federation: server %q listed twice", srv.Node)
			case strings.ContainsAny(srv.Node, "/"):
				d.Errorf(n.Line, keyTopology, "wan_federation: server %q: Consul's WAN federation through mesh gateways refuses node names with '/'", srv.Node)
			}
			seen[node] = true
			check("wan_federation server "+srv.Node, []string{srv.Address})
		}
		if v.Federation == nil {
			v.Federation = f
		} else {
			merge("wan_federation domain", &v.Federation.Domain, f.Domain)
			v.Federation.Servers = append(v.Federation.Servers, f.Servers...)
		}
	}
}

// endpoints pairs LAN addresses with the WAN addresses at the same index;
// WAN addresses beyond the LAN list stand alone.
// addEndpoints adds eps to (*m)[k], making the map when there is none.
func addEndpoints(m *map[mesh.ServiceKey][]mesh.Endpoint, k mesh.ServiceKey, eps []mesh.Endpoint) {
	if len(eps) == 0 {
		return
	}
	if *m == nil {
		*m = map[mesh.ServiceKey][]mesh.Endpoint{}
	}
	(*m)[k] = append((*m)[k], eps...)
}

// addSubsetEndpoints adds eps to (*m)[k][subset], making the maps.
func addSubsetEndpoints(m *map[mesh.ServiceKey]map[string][]mesh.Endpoint, k mesh.ServiceKey, subset string, eps []mesh.Endpoint) {
	if len(eps) == 0 {
		return
	}
	if *m == nil {
		*m = map[mesh.ServiceKey]map[string][]mesh.Endpoint{}
	}
	if (*m)[k] == nil {
		(*m)[k] = map[string][]mesh.Endpoint{}
	}
	(*m)[k][subset] = append((*m)[k][subset], eps...)
}

func endpoints(lan, wan []string) []mesh.Endpoint {
	out := make([]mesh.Endpoint, 0, max(len(lan), len(wan)))
	for i := range max(len(lan), len(wan)) {
		var e mesh.Endpoint
		if i < len(lan) {
			e.Address = lan[i]
		}
		if i < len(wan) {
			e.WAN = wan[i]
		}
		out = append(out, e)
	}
	return out
}

// splitImport splits a peer's import, "name" or "namespace/name", into its
// namespace ("" for the default) and name.
func splitImport(s string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(s, "/")
	if !ok {
		namespace, name = "", s
	}
	if name == "" || strings.Contains(name, "/") || ok && namespace == "" {
		return "", "", fmt.Errorf("import %q: want a service name or namespace/name", s)
	}
	return namespace, name, nil
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || host == "" {
		return fmt.Errorf("address %q: want host:port with a port from 1 to 65535", addr)
	}
	return nil
}
