package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sni"
)

// PeeringRouter is a gateway.Router for a mesh gateway that takes part in
// Consul cluster peering, as Consul's own mesh gateway (Envoy, as Consul
// 1.22 configures it) does, over the same mesh.View as the rest of the
// mesh:
//
//   - control plane, accepting side: while the mesh config entry says
//     Peering { PeerThroughMeshGateways = true }, the name
//     server.<local dc>.peering.<local trust domain> goes to the local Consul
//     servers' gRPC TLS addresses (View.Servers);
//   - control plane, dialing side: under the same entry, each peering this
//     cluster dials sends its peer's server name (View.Peers[...].ServerName)
//     to the peer's server addresses, which are the peer's mesh gateways when
//     the peer routes peering through them too;
//   - exported services: <svc>.<ns>.<partition>.<peer>.external.<local td>
//     goes to the service's healthy local mesh endpoints, only if the service
//     is exported to that peer (View.Exports); the bytes pass through, never
//     decrypted. An export whose protocol is http, http2 or grpc, which
//     Consul's gateway terminates, goes to an l7.Terminator (package
//     routing/l7) when Terminate (or L7) names one, passes through as TCP
//     with PassThroughL7Exports, and is refused otherwise
//     (ReasonL7Export);
//   - imported services: the exact SNI of each service a peer exports to this
//     cluster (View.Peers[...].Imports) goes to that peer's gateways, which is
//     how sidecars in "local" mode reach peered upstreams.
//
// Every other name goes to Mesh. A name in a peer's trust domain is routed
// only when it equals one learned from Consul (or from a static topology),
// never by pattern, so a gateway is no open relay for peers either; every
// refusal names its reason. The zero value is not usable: set Source.
//
// Routes carry what Consul configures on these clusters: an export's
// resolver LoadBalancer and its instances' weights, without limits, panic
// threshold or failover (Consul sets none of them on an export's
// clusters); round robin and the limits of the gateway's own
// service-defaults (GatewayService) for the local servers and imported
// services; round robin only for a peer's servers. Each connection reads
// the Source's current View once.
type PeeringRouter struct {
	// Source provides the view. Required.
	Source mesh.Source
	// Mesh routes the names that are not peering's; nil means a
	// MeshRouter over Source.
	Mesh gateway.Router
	// PassThroughL7Exports passes an exported service whose protocol is
	// http, http2 or grpc through as TCP, as every other export. Consul's
	// gateway terminates such exports to apply the service's
	// service-router and service-splitter and to forward the peer's
	// identity for L7 intentions; a PeeringRouter does that only with
	// Terminate or L7 set, so without them it refuses such exports
	// (ReasonL7Export) rather than let peers skip those rules unseen. Set
	// it where no such rule is written for the service's peers.
	PassThroughL7Exports bool
	// Terminate serves this gateway's exports whose protocol is http,
	// http2 or grpc, as Consul's gateway does, in this process: those
	// connections are handed to it whole (gateway.Route.Serve), instead of
	// refused or passed through. Set it to an l7.Terminator's ServeConn.
	// It takes precedence over L7 and PassThroughL7Exports.
	Terminate func(net.Conn)
	// L7 is the address of an l7.Terminator's listener to send those
	// connections to instead, one loopback hop away, when Terminate is not
	// set. It takes precedence over PassThroughL7Exports.
	L7 string
	// GatewayService is the gateway's own service name, whose
	// service-defaults' UpstreamConfig.Defaults.Limits bound the routes
	// Consul bounds (the local servers for peers, imported services; not a
	// peer's servers nor exports), and those of the MeshRouter it makes;
	// empty means DefaultGatewayService.
	GatewayService string

	mesh  atomic.Pointer[gateway.Router]
	index atomic.Pointer[peerIndex]
}

var _ gateway.Router = (*PeeringRouter)(nil)

// Route implements gateway.Router.
func (r *PeeringRouter) Route(ctx context.Context, hello *sni.ClientHello) (gateway.Route, error) {
	v := r.Source.View()
	if hello.ServerName != "" {
		name, err := sni.ParseName(hello.ServerName, v.TrustDomain)
		switch {
		case errors.Is(err, sni.ErrForeignTrustDomain):
			return r.toPeer(v, hello.ServerName)
		case err == nil && name.Kind == sni.KindPeeringServer:
			return r.toServers(v, name)
		case err == nil && name.Kind == sni.KindPeeredService:
			return r.toExported(v, name)
		}
	}
	return r.meshRouter().Route(ctx, hello)
}

func (r *PeeringRouter) meshRouter() gateway.Router {
	if r.Mesh != nil {
		return r.Mesh
	}
	if m := r.mesh.Load(); m != nil {
		return *m
	}
	var m gateway.Router = &MeshRouter{Source: r.Source, GatewayService: r.GatewayService}
	r.mesh.CompareAndSwap(nil, &m)
	return *r.mesh.Load()
}

// toServers routes server.<dc>.peering.<local td>: a peer's servers dialling
// ours through this gateway.
func (r *PeeringRouter) toServers(v *mesh.View, name sni.Name) (gateway.Route, error) {
	switch {
	case name.Datacenter != v.Datacenter:
		return gateway.Route{}, gateway.Reject(ReasonUnknownDatacenter,
			"peering servers of datacenter %q: this gateway serves the peering control plane of %q only", name.Datacenter, v.Datacenter)
	case !v.PeerThroughMeshGateways():
		return gateway.Route{}, gateway.Reject(ReasonNotThroughGateways,
			"%q: the mesh config entry does not set Peering { PeerThroughMeshGateways = true }", name.String())
	case len(v.Servers) == 0:
		return gateway.Route{}, gateway.Reject(ReasonNoPeeringServers, "%q: no Consul server with a gRPC TLS port is known in %s", name.String(), v.Datacenter)
	}
	return gateway.Route{Name: "peering servers " + v.Datacenter, Targets: v.Servers, Kind: RoutePeeringServers,
		Balance: roundRobin, Limits: gatewayLimits(v, r.GatewayService)}, nil
}

// toExported routes <svc>.<ns>.<part>.<peer>.external.<local td>: a peer's
// sidecar or gateway reaching a service this cluster exports to it, along
// the service's discovery chain (resolve.RouteExported, computed once per
// view): the primary target's healthy endpoints, never its failover
// targets, as Consul's gateway.
func (r *PeeringRouter) toExported(v *mesh.View, name sni.Name) (gateway.Route, error) {
	local := v.Local()
	if name.Partition != local.Partition || !v.ExportedTo(name.Service, name.Namespace, name.Peer) {
		return gateway.Route{}, gateway.Reject(ReasonNotExported,
			"service %q (namespace %q, partition %q) is not exported to peer %q", name.Service, name.Namespace, name.Partition, name.Peer)
	}
	if p := v.Protocol(name.Service, name.Namespace, name.Partition); p == "http" || p == "http2" || p == "grpc" {
		switch {
		case r.Terminate != nil:
			return gateway.Route{Name: "exported " + name.Service + " to peer " + name.Peer + ", terminated", Kind: RouteExportedService, Serve: r.Terminate}, nil
		case r.L7 != "":
			return gateway.Route{Name: "exported " + name.Service + " to peer " + name.Peer + ", terminated", Targets: []string{r.L7}, Kind: RouteExportedService}, nil
		case !r.PassThroughL7Exports:
			return gateway.Route{}, gateway.Reject(ReasonL7Export,
				"service %q is exported to peer %q with protocol %q: Consul's mesh gateway terminates such exports to apply its service-router, service-splitter and L7 intentions; "+
					"terminate them (routing.PeeringRouter.Terminate, meshgateway -l7-exports terminate), make its protocol tcp (service-defaults), or pass it through as TCP without those rules (routing.PeeringRouter.PassThroughL7Exports, meshgateway -l7-exports passthrough)",
				name.Service, name.Peer, p)
		}
	}
	er := r.indexOf(v).exported[[2]string{name.Service, name.Namespace}] // sni names every namespace
	if len(er.Primary) == 0 {
		if len(er.Skipped) > 0 {
			return gateway.Route{}, gateway.Reject(ReasonUnknownService,
				"exported service %q resolves to %s, in another datacenter, partition or peer: a mesh gateway sends a peer's connections to targets in its own (%s) only, as Consul's does",
				name.Service, strings.Join(er.Skipped, ", then "), local)
		}
		msg := fmt.Sprintf("exported service %q (namespace %q) has no healthy mesh endpoints in %s (its chain's target: %s)", name.Service, name.Namespace, local, er.Target)
		if len(er.NotFailedOver) > 0 {
			msg += fmt.Sprintf("; its failover targets (%s) are not used for a peer's connections, as Consul's gateway never fails an export over", strings.Join(er.NotFailedOver, ", "))
		}
		return gateway.Route{}, gateway.Reject(ReasonUnknownService, "%s", msg)
	}
	// No limits: Consul puts none on an export's clusters.
	return gateway.Route{Name: "exported " + name.Service + " to peer " + name.Peer, Targets: er.Primary, Weights: er.Weights, Kind: RouteExportedService,
		ConnectTimeout: er.ConnectTimeout, Balance: balanceOf(er.Balance)}, nil
}

// toPeer routes a name in another cluster's trust domain, only if it is
// exactly one the view learned: a peer's server name or an imported
// service's SNI.
func (r *PeeringRouter) toPeer(v *mesh.View, serverName string) (gateway.Route, error) {
	pr, ok := r.indexOf(v).routes[strings.ToLower(serverName)]
	switch {
	case !ok:
		return gateway.Route{}, gateway.Reject(ReasonForeignTrustDomain,
			"%q is neither in trust domain %q nor a peer's server or imported service name known to this gateway", serverName, v.TrustDomain)
	case pr.server && !v.PeerThroughMeshGateways():
		return gateway.Route{}, gateway.Reject(ReasonNotThroughGateways,
			"%q is the servers of peer %q, but the mesh config entry does not set Peering { PeerThroughMeshGateways = true }", serverName, pr.peer)
	}
	route := gateway.Route{Name: pr.name, Targets: pr.targets, Remote: true, Kind: pr.kind, Balance: roundRobin}
	if !pr.server {
		// Consul bounds imported services' clusters, not a peer's servers'.
		route.Limits = gatewayLimits(v, r.GatewayService)
	}
	return route, nil
}

// peerIndex holds what one view routes that is worth working out once: the
// exact foreign names and their routes, and the route of each local
// service exported to a peer, by name and namespace.
type peerIndex struct {
	view     *mesh.View
	routes   map[string]peerRoute
	exported map[[2]string]resolve.ExportedRoute
}

type peerRoute struct {
	name    string
	kind    string
	peer    string
	server  bool // a peer's control plane, routed only with PeerThroughMeshGateways
	targets []string
}

// indexOf returns the index of v, building it once per view.
func (r *PeeringRouter) indexOf(v *mesh.View) *peerIndex {
	if idx := r.index.Load(); idx != nil && idx.view == v {
		return idx
	}
	idx := &peerIndex{view: v, routes: map[string]peerRoute{}, exported: map[[2]string]resolve.ExportedRoute{}}
	local := v.Local()
	for k := range v.Exports {
		if (mesh.Location{Datacenter: k.Datacenter, Partition: k.Partition}) == local {
			idx.exported[[2]string{k.Name, k.Namespace}] = resolve.RouteExported(v, k.Name, k.Namespace)
		}
	}
	for _, p := range v.Peers {
		if p.ServerName != "" && len(p.ServerAddresses) > 0 {
			idx.routes[strings.ToLower(p.ServerName)] = peerRoute{name: "peer servers " + p.Name, kind: RoutePeerServers, peer: p.Name, server: true, targets: p.ServerAddresses}
		}
		for _, im := range p.Imports {
			if im.SNI != "" && len(im.Gateways) > 0 {
				idx.routes[strings.ToLower(im.SNI)] = peerRoute{name: "imported " + im.Name + " from peer " + p.Name, kind: RouteImportedService, peer: p.Name, targets: im.Gateways}
			}
		}
	}
	r.index.Store(idx)
	return idx
}
