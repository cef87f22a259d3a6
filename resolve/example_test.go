package resolve_test

import (
	"fmt"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/resolve"
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
	src, err := config.NewStatic(set, config.StaticOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range resolve.PlanAll(src.View()) {
		fmt.Println(p.Upstream, p.Mode, p.Layer, p.Route, p.Dial)
		fmt.Println(p.Hops)
		fmt.Println(p.SNI)
	}
	// Output:
	// api local instance local-gateway [10.0.1.5:8443]
	// [web sidecar gateway dc1 gateway dc2 api dc2]
	// api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul
}
