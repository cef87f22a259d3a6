package routing_test

import (
	"context"
	"testing"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

// FuzzRoute routes arbitrary server names through both clusters' routers:
// never a panic, and never a target the view does not hold (no open relay).
func FuzzRoute(f *testing.F) {
	for _, name := range []string{
		sni.PeeringServerSNI("dc1", tdB), sni.PeeringServerSNI("dc1", tdA),
		sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB), sni.PeeredServiceSNI("api", "ns", "part", "cluster-a", tdB),
		sni.ServiceSNI("web", "", "", "", "dc1", tdA), sni.GatewaySNI("dc2", "", tdA),
		"api.default.default.cluster-a.external." + tdB + ".evil.example", "server.dc1.peering.evil.example",
		"external." + tdB, ".peering." + tdB, "",
	} {
		f.Add(name)
	}
	var routers []*routing.PeeringRouter
	var known []map[string]bool
	for _, dir := range []string{"testdata/cluster-a", "testdata/cluster-b"} {
		src, err := config.LoadStatic(config.StaticOptions{}, dir)
		if err != nil {
			f.Fatal(err)
		}
		routers = append(routers, &routing.PeeringRouter{Source: src})
		known = append(known, addressesOf(src.View()))
	}
	f.Fuzz(func(t *testing.T, name string) {
		for i, r := range routers {
			route, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
			if err != nil {
				continue
			}
			if len(route.Targets) == 0 {
				t.Fatalf("%q: a route with no targets and no error", name)
			}
			for _, target := range route.Targets {
				if !known[i][target] {
					t.Fatalf("%q routed to %q, an address the view does not hold", name, target)
				}
			}
		}
	})
}

// addressesOf returns every address a view holds.
func addressesOf(v *mesh.View) map[string]bool {
	out := map[string]bool{}
	for _, eps := range v.Services {
		for _, e := range eps {
			out[e.Address], out[e.WAN] = true, true
		}
	}
	for _, eps := range v.Gateways {
		for _, e := range eps {
			out[e.Address], out[e.WAN] = true, true
		}
	}
	for _, s := range v.Servers {
		out[s] = true
	}
	for _, p := range v.Peers {
		for _, a := range append(append([]string(nil), p.Gateways...), p.ServerAddresses...) {
			out[a] = true
		}
	}
	delete(out, "")
	return out
}
