package admin

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

// Explanation is the decision a gateway's Router takes now for a server
// name: the route, or the refusal and the rule that produced it. It holds
// addresses and names only, never a token or key material.
type Explanation struct {
	ServerName string `json:"server_name"`
	// Decision is "forward", "serve" (an L7 export the gateway
	// terminates in its own process) or "refuse".
	Decision string `json:"decision"`
	// Layer is the routing layer that routed it: "wan-federation",
	// "peering", "mesh", or "table" for a gateway.Table.
	Layer string `json:"layer,omitempty"`
	// Kind and Route are the route's kind and name, as metrics and the
	// access log give them.
	Kind  string `json:"kind,omitempty"`
	Route string `json:"route,omitempty"`
	// Targets are the addresses in the order the Router gives them now (a
	// connection tries the ejected ones last).
	Targets          []Target `json:"targets,omitempty"`
	Remote           bool     `json:"remote,omitempty"`
	ConnectTimeoutMS int64    `json:"connect_timeout_ms,omitempty"`
	// Reason and Rule, for a refusal: the reason metrics and the access
	// log give, and the Router's error, which says which rule refused.
	Reason string `json:"reason,omitempty"`
	Rule   string `json:"rule,omitempty"`
}

// Target is one address a route would dial and its state.
type Target struct {
	Address string `json:"address"`
	// Health is "passing": a route's targets are the endpoints Consul
	// reports routable (passing, or warning where that counts); critical
	// ones are in no route.
	Health string `json:"health"`
	// Ejected says outlier detection took the target out after a failed
	// connect, since EjectedSince; it is tried after the others until a
	// probe connects to it.
	Ejected      bool       `json:"ejected"`
	EjectedSince *time.Time `json:"ejected_since,omitempty"`
}

// Explainer explains server names with the Router a gateway routes by.
type Explainer struct {
	// Router is the gateway.Server's own Router: the explanation is its
	// decision, asked as the Server asks it for a ClientHello with that
	// name (lower-cased); asking advances its rotation of targets as a
	// connection would.
	Router gateway.Router
	// Ejected returns the targets ejected now (gateway.Server.Ejected);
	// nil means none.
	Ejected func() map[string]time.Time
}

// Explain returns the decision for name.
func (e Explainer) Explain(ctx context.Context, name string) Explanation {
	name = strings.ToLower(strings.TrimSpace(name))
	x := Explanation{ServerName: name}
	route, err := e.Router.Route(ctx, &sni.ClientHello{ServerName: name})
	if err == nil && len(route.Targets) == 0 && route.Serve == nil {
		err = gateway.Reject(gateway.ReasonNoRoute, "route %q has no targets", route.Name)
	}
	if err != nil {
		x.Decision, x.Reason, x.Rule = "refuse", gateway.ReasonRouterError, err.Error()
		var rej *gateway.Rejection
		if errors.As(err, &rej) {
			x.Reason, x.Rule = rej.Reason, rej.Err.Error()
		}
		return x
	}
	x.Decision, x.Kind, x.Route, x.Remote = "forward", route.Kind, route.Name, route.Remote
	x.Layer = layerOf(route.Kind)
	x.ConnectTimeoutMS = route.ConnectTimeout.Milliseconds()
	if route.Serve != nil {
		x.Decision = "serve"
	}
	var ejected map[string]time.Time
	if e.Ejected != nil {
		ejected = e.Ejected()
	}
	for _, t := range route.Targets {
		tg := Target{Address: t, Health: "passing"}
		if since, ok := ejected[t]; ok {
			tg.Ejected, tg.EjectedSince = true, &since
		}
		x.Targets = append(x.Targets, tg)
	}
	return x
}

func layerOf(kind string) string {
	switch kind {
	case routing.RouteService, routing.RouteGateway:
		return "mesh"
	case routing.RoutePeeringServers, routing.RoutePeerServers, routing.RouteExportedService, routing.RouteImportedService:
		return "peering"
	case routing.RouteWANFederation:
		return "wan-federation"
	case gateway.KindTable:
		return "table"
	}
	return ""
}
