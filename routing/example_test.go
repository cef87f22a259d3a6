package routing_test

import (
	"context"
	"fmt"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

// The routes of a gateway that carries WAN federation, from its topology
// file: the federation's server names, and every other name as Consul's
// mesh gateway routes it (peering, then the mesh).
func ExampleNew() {
	src, err := config.LoadStatic(config.StaticOptions{}, "testdata/dc1.hcl")
	if err != nil {
		fmt.Println(err)
		return
	}
	router := &routing.FederationRouter{Source: src}
	for _, name := range []string{
		"dc1-server-1.server.dc1.consul",
		"node-dc2.server.dc2.consul",
		"server.dc9.consul",
		"api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul",
	} {
		route, err := router.Route(context.Background(), &sni.ClientHello{ServerName: name})
		if err != nil {
			fmt.Println(name, "->", err)
			continue
		}
		fmt.Println(name, "->", route.Kind, route.Targets)
	}
	// Output:
	// dc1-server-1.server.dc1.consul -> wan-federation [127.0.1.2:8300]
	// node-dc2.server.dc2.consul -> wan-federation [127.0.2.105:8443]
	// server.dc9.consul -> gateway: rejected (unknown-datacenter): "server.dc9.consul": no mesh gateways known for datacenter "dc9"
	// api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul -> service [127.0.1.10:21000]
}

// Route a mesh gateway's connections as Consul's own gateway does: local
// services to their endpoints, other datacenters to their gateways, and
// nothing else.
func ExampleMeshRouter() {
	set, err := config.Parse("topology.hcl", []byte(`
topology {
  datacenter   = "dc1"
  trust_domain = "`+config.DefaultTrustDomain+`"
  services = [{ name = "api", addresses = ["10.0.1.10:21000"] }]
  gateways = [{ datacenter = "dc2", wan_addresses = ["198.51.100.2:8443"] }]
}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	src, err := config.NewStatic(set, config.StaticOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	router := &routing.MeshRouter{Source: src}
	for _, name := range []string{
		sni.ServiceSNI("api", "", "", "", "dc1", config.DefaultTrustDomain),
		sni.ServiceSNI("web", "", "", "", "dc2", config.DefaultTrustDomain),
		"www.example.com",
	} {
		route, err := router.Route(context.Background(), &sni.ClientHello{ServerName: name})
		if err != nil {
			fmt.Println("rejected:", name)
			continue
		}
		fmt.Println(route.Targets)
	}
	// Output:
	// [10.0.1.10:21000]
	// [198.51.100.2:8443]
	// rejected: www.example.com
}
