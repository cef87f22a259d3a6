// Package consulview keeps a resolve.View current from a live Consul agent
// through the consul/api client: config entries, services and their mesh
// endpoints, every datacenter's mesh gateways, the local Consul servers,
// peerings, exported and imported services. It also registers a gateway with
// the agent (RegisterGateway). It is the only package whose tests start Consul
// agents for resolve's semantics; planning and routing over a View, and the
// static source, live in package resolve and need no agent.
//
//	src, err := consulview.New(ctx, client, consulview.Options{Logger: log})
//	router := &resolve.MeshRouter{Source: src}
package consulview
