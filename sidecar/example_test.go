package sidecar_test

import (
	"fmt"
	"net/url"

	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
)

// The identity a destination must present: the planned target, in the
// plan's datacenter, namespace and partition.
func ExampleExpectedIdentity() {
	plan := resolve.Plan{Upstream: "api", Datacenter: "dc2", Namespace: "default", Partition: "default"}
	id := sidecar.ExpectedIdentity(plan, resolve.DefaultTrustDomain)
	fmt.Println(id)
	u, _ := url.Parse("spiffe://" + resolve.DefaultTrustDomain + "/ns/default/dc/dc2/svc/billing")
	fmt.Println(id.Matches(u))
	// Output:
	// spiffe://5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul/ns/default/dc/dc2/svc/api
	// false
}
