package mesh_test

import (
	"fmt"

	"github.com/meshgate/meshgate/mesh"
)

// A View built in Go, and the lookups that fill in Consul's defaults: an
// empty namespace or partition is "default", an empty datacenter the
// local one.
func ExampleView() {
	v := &mesh.View{
		Datacenter: "dc1",
		Services: map[mesh.ServiceKey][]mesh.Endpoint{
			{Name: "api", Namespace: "default", Partition: "default", Datacenter: "dc1"}: {{Address: "10.0.1.10:21000"}},
		},
		Gateways: map[mesh.Location][]mesh.Endpoint{
			{Datacenter: "dc2", Partition: "default"}: {{Address: "10.0.2.5:8443", WAN: "203.0.113.5:8443"}},
		},
	}
	fmt.Println(mesh.Addresses(v.Endpoints("api", "", "", ""), false))
	fmt.Println(v.GatewaysIn(mesh.Location{Datacenter: "dc2"})[0].BestAddress(true))
	fmt.Println(v.Datacenters(), v.Local())
	// Output:
	// [10.0.1.10:21000]
	// 203.0.113.5:8443
	// [dc1 dc2] dc1
}
