package federation_test

import (
	"context"
	"fmt"

	"github.com/meshgate/meshgate/federation"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sni"
)

// The routes of a gateway that carries WAN federation, from its topology
// file: the federation's server names, and every other name as Consul's
// mesh gateway routes it (peering, then the mesh).
func ExampleRouter() {
	src, err := resolve.LoadStatic(resolve.StaticOptions{}, "testdata/dc1.hcl")
	if err != nil {
		fmt.Println(err)
		return
	}
	router := &federation.Router{Source: src}
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
