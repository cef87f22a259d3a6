package resolve_test

import (
	"context"
	"fmt"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sni"
)

// Plan an upstream from the files people give Consul.
func ExamplePlanAll() {
	set, err := config.Parse("web.hcl", []byte(`
service {
  name = "web"
  connect { sidecar_service { proxy {
    mesh_gateway { mode = "local" }
    upstreams = [{ destination_name = "api", datacenter = "dc2", local_bind_port = 10000 }]
  } } }
}
topology {
  datacenter = "dc1"
  gateways = [{ datacenter = "dc1", addresses = ["10.0.1.5:8443"] }]
}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	src, err := resolve.NewStatic(set, resolve.StaticOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range resolve.PlanAll(src.View()) {
		fmt.Println(p.Upstream, p.Mode, p.Source, p.Route, p.Dial)
		fmt.Println(p.Hops)
		fmt.Println(p.SNI)
	}
	// Output:
	// api local instance local-gateway [10.0.1.5:8443]
	// [web sidecar gateway dc1 gateway dc2 api dc2]
	// api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul
}

// Route with a View built in Go: empty namespaces and partitions mean
// "default", as in the files.
func ExampleStaticView() {
	src, err := resolve.StaticView(&resolve.View{
		Datacenter:  "dc1",
		TrustDomain: resolve.DefaultTrustDomain,
		Services:    map[resolve.ServiceKey][]resolve.Endpoint{{Name: "api"}: {{Address: "10.0.1.10:21000"}}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	route, err := (&resolve.MeshRouter{Source: src}).Route(context.Background(),
		&sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", resolve.DefaultTrustDomain)})
	fmt.Println(route.Targets, err)
	// Output: [10.0.1.10:21000] <nil>
}

// Route a mesh gateway's connections as Consul's own gateway does: local
// services to their endpoints, other datacenters to their gateways, and
// nothing else.
func ExampleMeshRouter() {
	set, err := config.Parse("topology.hcl", []byte(`
topology {
  datacenter   = "dc1"
  trust_domain = "`+resolve.DefaultTrustDomain+`"
  services = [{ name = "api", addresses = ["10.0.1.10:21000"] }]
  gateways = [{ datacenter = "dc2", wan_addresses = ["198.51.100.2:8443"] }]
}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	src, err := resolve.NewStatic(set, resolve.StaticOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	router := &resolve.MeshRouter{Source: src}
	for _, name := range []string{
		sni.ServiceSNI("api", "", "", "", "dc1", resolve.DefaultTrustDomain),
		sni.ServiceSNI("web", "", "", "", "dc2", resolve.DefaultTrustDomain),
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
