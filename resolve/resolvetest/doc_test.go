package resolvetest_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

var consulDir = filepath.Join("..", "testdata", "failover") // your config directory

// The test docs/testing.md shows: a project's own routing decision,
// asserted against the files it gives Consul.
func TestWebReachesAPIThroughTheLocalGateway(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, consulDir)
	plan := resolvetest.Plan(t, src, "web", "api")
	resolvetest.Expect(t, plan, resolvetest.Want{Mode: api.MeshGatewayModeLocal, Layer: modes.LayerUpstream})
	resolvetest.ExpectChain(t, plan, "api dc1 direct", "api dc2 local-gateway")
}

// The gateway side, as docs/testing.md shows it: where a mesh gateway
// built from the same files sends a name, and that it refuses one it
// does not own.
func TestGatewaySendsDC2ToItsGateway(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, consulDir)
	router := &routing.MeshRouter{Source: src}
	td := src.View().TrustDomain

	route, err := router.Route(context.Background(), &sni.ClientHello{ServerName: "api.default.dc2.internal." + td})
	if err != nil || route.Kind != "gateway" || len(route.Targets) != 1 || route.Targets[0] != "127.0.2.105:8443" {
		t.Fatalf("api in dc2: got %+v, %v; want dc2's gateway at its WAN address", route, err)
	}

	_, err = router.Route(context.Background(), &sni.ClientHello{ServerName: "api.default.dc3.internal." + td})
	var rej *gateway.Rejection
	if !errors.As(err, &rej) || rej.Reason != routing.ReasonUnknownDatacenter {
		t.Fatalf("api in dc3: got %v; want a rejection for an unknown datacenter", err)
	}
}

// Want.NoMode asserts that no layer sets a mode; Mode "" cannot.
func TestWantNoMode(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{TrustDomain: config.DefaultTrustDomain}, filepath.Join(seeds, "upstreams.hcl"))
	set := resolvetest.Plan(t, src, "web", "api")
	msg := check(t, func(tb testing.TB) { resolvetest.Expect(tb, set, resolvetest.Want{NoMode: true}) })
	if msg == "" {
		t.Error("a plan whose upstream sets a mode passed NoMode")
	}
	unset := set
	unset.Mode, unset.Layer = "", modes.LayerDefault
	resolvetest.Expect(t, unset, resolvetest.Want{NoMode: true})
}
