package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/meshgate/meshgate/internal/decode"
)

// Topology is meshgate's own document: where things are, for planning and
// routing without a Consul agent. It is only the file form of
// [github.com/meshgate/meshgate/resolve.View], meshgate's one model of the
// mesh: resolve.NewStatic copies it into a View as written, and the View's
// rules (defaults, lower-case datacenters, the SNI of a peer's imports) apply
// to it there, as to a View built in Go. This package checks only what a
// file can get wrong on its own: missing names, malformed addresses, fields
// that go together. In HCL:
//
//	topology {
//	  datacenter   = "dc1"
//	  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
//	  services = [
//	    { name = "api", datacenter = "dc2", addresses = ["10.0.2.10:21000"], wan_addresses = ["203.0.113.7:21000"] },
//	  ]
//	  gateways = [
//	    { datacenter = "dc1", addresses = ["10.0.1.5:8443"], wan_addresses = ["198.51.100.5:8443"] },
//	  ]
//	  servers = ["10.0.1.2:8503"]
//	  wan_federation {
//	    servers = [{ node = "dc1-server-1", address = "10.0.1.2:8300" }]
//	  }
//	  peers = [
//	    { name = "webstuff", trust_domain = "...consul", name_at_peer = "dc1-cluster", gateways = ["192.0.2.9:8443"],
//	      imports = ["billing"] },
//	  ]
//	}
//
// JSON and YAML use the same keys. Several topology documents merge: scalar
// fields must agree, lists are appended.
type Topology struct {
	// Datacenter is the local datacenter.
	Datacenter string
	// Partition is the local admin partition; empty means "default".
	Partition string
	// TrustDomain is the cluster's trust domain, "<cluster-id>.consul".
	TrustDomain string
	// Services lists each service's mesh endpoints (its sidecar proxies or
	// Connect-native instances) per datacenter.
	Services []TopologyService
	// Gateways lists the mesh gateways of each datacenter and partition.
	Gateways []TopologyGateway
	// Peers lists the cluster peers.
	Peers []TopologyPeer
	// Servers are the local Consul servers' gRPC TLS addresses, where peering
	// control-plane traffic goes when the mesh entry routes peering through
	// mesh gateways.
	Servers []string
	// WANFederation, when present, makes the gateway carry WAN federation
	// between Consul's servers through mesh gateways: the local servers'
	// names route to them, and other datacenters' server names to those
	// datacenters' Gateways.
	WANFederation *TopologyFederation `alias:"wan_federation"`
}

// TopologyFederation is the file form of resolve.Federation:
//
//	wan_federation {
//	  domain  = "consul"
//	  servers = [{ node = "dc1-server-1", address = "10.0.1.2:8300" }]
//	}
type TopologyFederation struct {
	// Domain is the servers' DNS domain; empty means "consul".
	Domain string
	// Servers are the local Consul servers: node name and server RPC
	// address.
	Servers []TopologyServer
}

// TopologyServer is one local Consul server: resolve.Server.
type TopologyServer struct {
	Node    string
	Address string
}

// TopologyService is one service's healthy mesh endpoints in one datacenter:
// an entry of resolve.View's Services, or of its Subsets when Subset is set.
type TopologyService struct {
	Name       string
	Namespace  string // empty means "default"
	Partition  string // empty means "default"
	Datacenter string // empty means the local datacenter
	// Subset, if set, names the service-resolver subset these endpoints
	// make up: what Consul would select with the subset's Filter. The
	// service's resolver must define it.
	Subset string
	// Addresses are LAN "host:port" addresses; WANAddresses, where set, the
	// ones reachable from other datacenters, in the same order.
	Addresses    []string
	WANAddresses []string `alias:"wan_addresses"`
}

// TopologyGateway is the mesh gateways of one datacenter and partition: an
// entry of resolve.View's Gateways.
type TopologyGateway struct {
	Datacenter   string
	Partition    string // empty means "default"
	Addresses    []string
	WANAddresses []string `alias:"wan_addresses"`
}

// TopologyPeer is one cluster peer: the file form of resolve.Peer, whose
// fields of the same names say what each means.
type TopologyPeer struct {
	Name            string
	TrustDomain     string `alias:"trust_domain"`
	NameAtPeer      string `alias:"name_at_peer"`
	Gateways        []string
	ServerName      string   `alias:"server_name"`
	ServerAddresses []string `alias:"server_addresses"`
	// Imports names the services the peer exports to this cluster, "name"
	// or "namespace/name" (see SplitImport): resolve.Peer's Imports.
	Imports []string
}

func (s *Set) addTopology(d *decode.Decoder, n *decode.Node) {
	var t Topology
	before := errorCount(d.Err())
	d.Decode(n, &t, keyTopology)
	if errorCount(d.Err()) != before {
		return
	}
	check := func(what string, addrs []string) {
		for _, a := range addrs {
			if err := checkHostPort(a); err != nil {
				d.Errorf(n.Line, keyTopology, "%s: %v", what, err)
			}
		}
	}
	for _, sv := range t.Services {
		if sv.Name == "" {
			d.Errorf(n.Line, keyTopology, "a service without a name")
		}
		check("service "+sv.Name, append(sv.Addresses, sv.WANAddresses...))
	}
	for _, g := range t.Gateways {
		if g.Datacenter == "" {
			d.Errorf(n.Line, keyTopology, "gateways without a datacenter")
		}
		check("gateways of "+g.Datacenter, append(g.Addresses, g.WANAddresses...))
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
		for _, im := range p.Imports {
			if _, _, err := SplitImport(im); err != nil {
				d.Errorf(n.Line, keyTopology, "peer %q: %v", p.Name, err)
			}
		}
	}
	check("servers", t.Servers)
	if f := t.WANFederation; f != nil {
		seen := map[string]bool{}
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
	}
	if s.Topology == nil {
		s.Topology = &t
		return
	}
	merge := func(field string, dst *string, src string) {
		if src != "" && *dst != "" && *dst != src {
			d.Errorf(n.Line, keyTopology, "%s %q disagrees with %q from an earlier topology document", field, src, *dst)
		} else if src != "" {
			*dst = src
		}
	}
	merge("datacenter", &s.Topology.Datacenter, t.Datacenter)
	merge("partition", &s.Topology.Partition, t.Partition)
	merge("trust_domain", &s.Topology.TrustDomain, t.TrustDomain)
	s.Topology.Services = append(s.Topology.Services, t.Services...)
	s.Topology.Gateways = append(s.Topology.Gateways, t.Gateways...)
	s.Topology.Peers = append(s.Topology.Peers, t.Peers...)
	s.Topology.Servers = append(s.Topology.Servers, t.Servers...)
	switch f := t.WANFederation; {
	case f == nil:
	case s.Topology.WANFederation == nil:
		s.Topology.WANFederation = f
	default:
		merge("wan_federation domain", &s.Topology.WANFederation.Domain, f.Domain)
		s.Topology.WANFederation.Servers = append(s.Topology.WANFederation.Servers, f.Servers...)
	}
}

// SplitImport splits a peer's import, "name" or "namespace/name", into its
// namespace ("" for the default) and name.
func SplitImport(s string) (namespace, name string, err error) {
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
