// Package registration registers a mesh gateway with the local Consul
// agent, as "consul connect envoy -gateway=mesh -register" does for Envoy:
// Kind mesh-gateway, lan and wan tagged addresses, a TCP check that
// deregisters a gateway that died, and the consul-wan-federation meta of a
// gateway that carries WAN federation (-expose-servers). GatewayService
// reads the registration back as the agent merged it, the Proxy.Config a
// gateway runs with (package proxyconfig reads it).
//
// It is apart from package consulview, which follows the mesh: a program
// may register a gateway and route from files, or follow an agent
// without registering.
package registration
