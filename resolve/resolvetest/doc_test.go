package resolvetest_test

import (
	"path/filepath"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
)

var consulDir = filepath.Join("..", "testdata", "failover") // your config directory

// The test docs/testing.md shows: a project's own routing decision,
// asserted against the files it gives Consul.
func TestWebReachesAPIThroughTheLocalGateway(t *testing.T) {
	src := resolvetest.Load(t, resolve.StaticOptions{}, consulDir)
	plan := resolvetest.Plan(t, src, "web", "api")
	resolvetest.Expect(t, plan, resolvetest.Want{Mode: api.MeshGatewayModeLocal, Source: modes.SourceUpstream})
	resolvetest.ExpectChain(t, plan, "api dc1 direct", "api dc2 local-gateway")
}

// Want.NoMode asserts that no layer sets a mode; Mode "" cannot.
func TestWantNoMode(t *testing.T) {
	src := resolvetest.Load(t, resolve.StaticOptions{TrustDomain: resolve.DefaultTrustDomain}, filepath.Join(seeds, "upstreams.hcl"))
	set := resolvetest.Plan(t, src, "web", "api")
	msg := check(t, func(tb testing.TB) { resolvetest.Expect(tb, set, resolvetest.Want{NoMode: true}) })
	if msg == "" {
		t.Error("a plan whose upstream sets a mode passed NoMode")
	}
	unset := set
	unset.Mode, unset.Source = "", modes.SourceDefault
	resolvetest.Expect(t, unset, resolvetest.Want{NoMode: true})
}
