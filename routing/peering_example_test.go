package routing_test

import (
	"context"
	"fmt"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

// Cluster B's gateway, from B's files: the peering control plane to B's
// servers, api exported to cluster-a to api's instances, and a service not
// exported refused.
func ExamplePeeringRouter() {
	src, err := config.LoadStatic(config.StaticOptions{}, "testdata/cluster-b")
	if err != nil {
		fmt.Println(err)
		return
	}
	td := src.View().TrustDomain
	router := &routing.PeeringRouter{Source: src}
	for _, name := range []string{
		sni.PeeringServerSNI("dc1", td),
		sni.PeeredServiceSNI("api", "", "", "cluster-a", td),
		sni.PeeredServiceSNI("billing", "", "", "cluster-a", td),
	} {
		route, err := router.Route(context.Background(), &sni.ClientHello{ServerName: name})
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Println(route.Kind, route.Targets)
	}
	// Output:
	// peering-servers [127.0.20.2:8503]
	// exported-service [127.0.20.10:21000 127.0.20.11:21000]
	// gateway: rejected (not-exported): service "billing" (namespace "default", partition "default") is not exported to peer "cluster-a"
}
