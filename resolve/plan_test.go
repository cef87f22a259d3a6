package resolve_test

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	td     = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
	peerTD = "11111111-2222-3333-4444-555555555555.consul"
)

var topology = filepath.Join("testdata", "topology.hcl")

func seed(name string) string { return filepath.Join("..", "config", "testdata", "seeds", name) }

// webProxy is a sidecar registration for web with the given upstreams (HCL).
func webProxy(instanceMode, upstreams string) string {
	mg := ""
	if instanceMode != "" {
		mg = `mesh_gateway { mode = "` + instanceMode + `" }`
	}
	return `service {
  name = "web-sidecar-proxy"
  kind = "connect-proxy"
  port = 21000
  proxy {
    destination_service_name = "web"
    ` + mg + `
    upstreams = [` + upstreams + `]
  }
}`
}

// The seed's "service instance" example: remote mode on the instance, an
// upstream in datacenter "secondary".
func TestSeedInstanceRemote(t *testing.T) {
	for _, f := range []string{"instance-remote.hcl", "instance-remote.yaml"} {
		src := resolvetest.Load(t, config.StaticOptions{}, topology, seed(f))
		plans := resolve.PlanAll(src.View())
		require.NotEmpty(t, plans, f)
		for _, p := range plans {
			assert.Equal(t, "web", p.Service)
			assert.Equal(t, "api", p.Upstream)
			assert.Equal(t, api.MeshGatewayModeRemote, p.Mode, f)
			assert.Equal(t, modes.LayerInstance, p.Layer, f)
			assert.Equal(t, resolve.PathRemoteGateway, p.Route, f)
			assert.Equal(t, "secondary", p.Datacenter, f)
			assert.Equal(t, sni.ServiceSNI("api", "", "", "", "secondary", td), p.SNI, f)
			assert.Equal(t, []string{"127.0.2.105:8443"}, p.Dial, "remote: the destination's gateways, WAN addresses")
			assert.Equal(t, []string{"web sidecar", "gateway secondary", "api secondary"}, p.Hops)
			assert.Empty(t, p.Warnings)
		}
	}
}

// The inline sidecar_service alternative of the same seed example plans the
// same way.
func TestSeedInstanceInlineSidecar(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, topology, seed("instance-remote.hcl"))
	plans := resolve.PlanAll(src.View())
	require.Len(t, plans, 2)
	assert.Equal(t, "web-sidecar-proxy", plans[1].Proxy)
	plans[0].Proxy = plans[1].Proxy
	assert.Equal(t, plans[0], plans[1])
}

// The seed's "proxy upstream" example: each upstream sets its own mode. The
// upstreams name no datacenter, so they are local and dialled directly.
func TestSeedUpstreamModesInLocalDatacenter(t *testing.T) {
	for _, f := range []string{"upstreams.hcl", "upstreams.yaml"} {
		src := resolvetest.Load(t, config.StaticOptions{}, topology, seed(f))
		api_ := resolvetest.Plan(t, src, "web", "api")
		assert.Equal(t, api.MeshGatewayModeRemote, api_.Mode)
		assert.Equal(t, modes.LayerUpstream, api_.Layer)
		assert.Equal(t, resolve.PathDirect, api_.Route)
		assert.Equal(t, []string{"127.0.1.10:21000"}, api_.Dial)
		require.Len(t, api_.Warnings, 1)
		assert.Contains(t, api_.Warnings[0], `mode "remote" from upstream is ignored`)

		logging := resolvetest.Plan(t, src, "web", "logging")
		assert.Equal(t, api.MeshGatewayModeNone, logging.Mode)
		assert.Empty(t, logging.Dial)
		assert.Contains(t, logging.Warnings, "no addresses known for logging dc1")
	}
}

// The same three upstreams pointed at datacenter "secondary" show what each
// mode means across datacenters.
func TestUpstreamModesAcrossDatacenters(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"web.hcl": webProxy("", `
		{ destination_name = "api", datacenter = "secondary", mesh_gateway { mode = "remote" } },
		{ destination_name = "db", datacenter = "secondary", mesh_gateway { mode = "local" } },
		{ destination_name = "logging", datacenter = "secondary", mesh_gateway { mode = "none" } },
		{ destination_name = "api", datacenter = "nowhere", local_bind_port = 9 },
	`)})
	src := resolvetest.Load(t, config.StaticOptions{}, topology, dir)
	plans := resolve.PlanAll(src.View())
	require.Len(t, plans, 4)

	remote, local, none, unknown := plans[0], plans[1], plans[2], plans[3]
	assert.Equal(t, []string{"127.0.2.105:8443"}, remote.Dial)
	assert.Equal(t, []string{"web sidecar", "gateway secondary", "api secondary"}, remote.Hops)

	assert.Equal(t, resolve.PathLocalGateway, local.Route)
	assert.Equal(t, []string{"127.0.1.5:8443"}, local.Dial, "local: the local gateways, LAN addresses")
	assert.Equal(t, []string{"web sidecar", "gateway dc1", "gateway secondary", "db secondary"}, local.Hops)
	assert.Equal(t, sni.ServiceSNI("db", "", "", "", "secondary", td), local.SNI)

	assert.Equal(t, resolve.PathDirect, none.Route)
	assert.Empty(t, none.Dial, "logging has no endpoints in secondary")

	assert.Equal(t, modes.LayerDefault, unknown.Layer)
	assert.Equal(t, api.MeshGatewayModeDefault, unknown.Mode)
	assert.Equal(t, 9, unknown.LocalBindPort)
	assert.Contains(t, unknown.Warnings, "no addresses known for api nowhere")
}

// With no mode on the upstream, each lower layer in turn decides.
func TestLowerLayersDecide(t *testing.T) {
	up := `{ destination_name = "api", datacenter = "secondary" }`
	cases := []struct {
		name   string
		files  map[string]string
		mode   api.MeshGatewayMode
		source modes.Layer
		dial   []string
	}{
		{"nothing set: direct to WAN addresses", map[string]string{"web.hcl": webProxy("", up)}, "", modes.LayerDefault, []string{"127.0.2.110:21000"}},
		{"proxy-defaults (seed)", map[string]string{"web.hcl": webProxy("", up), "g.hcl": mustRead(t, seed("global-local.hcl"))}, "local", modes.LayerProxyDefaults, []string{"127.0.1.5:8443"}},
		{"service-defaults (seed) over proxy-defaults", map[string]string{"web.hcl": webProxy("", up), "g.yaml": "Kind: proxy-defaults\nName: global\nMeshGateway: {Mode: remote}\n", "s.yaml": mustRead(t, seed("web-defaults-local.yaml"))}, "local", modes.LayerServiceDefaults, []string{"127.0.1.5:8443"}},
		{"upstream-defaults over service-defaults", map[string]string{"web.hcl": webProxy("", up), "s.hcl": `Kind = "service-defaults"
Name = "web"
MeshGateway { Mode = "local" }
UpstreamConfig { Defaults { MeshGateway { Mode = "remote" } } }`}, "remote", modes.LayerUpstreamDefaults, []string{"127.0.2.105:8443"}},
		{"instance over upstream-defaults", map[string]string{"web.hcl": webProxy("none", up), "s.hcl": `Kind = "service-defaults"
Name = "web"
UpstreamConfig { Defaults { MeshGateway { Mode = "remote" } } }`}, "none", modes.LayerInstance, []string{"127.0.2.110:21000"}},
		{"upstream-override over instance", map[string]string{"web.hcl": webProxy("none", up), "s.hcl": `Kind = "service-defaults"
Name = "web"
UpstreamConfig { Overrides = [{ Name = "api", MeshGateway { Mode = "local" } }] }`}, "local", modes.LayerUpstreamOverride, []string{"127.0.1.5:8443"}},
		// Consul's discovery chain compiler gives each target its own
		// service's mode when the downstream sets none (the agent's
		// /v1/discovery-chain/api says "local" here).
		{"the destination's service-defaults when nothing else sets a mode", map[string]string{"web.hcl": webProxy("", up), "s.hcl": `Kind = "service-defaults"
Name = "api"
MeshGateway { Mode = "local" }`}, "local", modes.LayerDestinationDefaults, []string{"127.0.1.5:8443"}},
		{"any downstream layer over the destination's service-defaults", map[string]string{"web.hcl": webProxy("", up), "s.hcl": `Kind = "service-defaults"
Name = "api"
MeshGateway { Mode = "local" }`, "g.yaml": "Kind: proxy-defaults\nName: global\nMeshGateway: {Mode: remote}\n"}, "remote", modes.LayerProxyDefaults, []string{"127.0.2.105:8443"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := resolvetest.Load(t, config.StaticOptions{}, topology, resolvetest.Dir(t, c.files))
			p := resolvetest.Plan(t, src, "web", "api")
			assert.Equal(t, c.mode, p.Mode)
			assert.Equal(t, c.source, p.Layer)
			assert.Equal(t, c.dial, p.Dial)
		})
	}
}

func TestPeeredUpstreams(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"web.hcl": webProxy("", `
		{ destination_name = "billing", destination_peer = "webstuff" },
		{ destination_name = "billing", destination_peer = "webstuff", destination_namespace = "ns1", mesh_gateway { mode = "none" } },
		{ destination_name = "billing", destination_peer = "webstuff", mesh_gateway { mode = "local" } },
		{ destination_name = "billing", destination_peer = "stranger" },
	`)})
	plans := resolve.PlanAll(resolvetest.Load(t, config.StaticOptions{}, topology, dir).View())
	require.Len(t, plans, 4)
	def, none, local, stranger := plans[0], plans[1], plans[2], plans[3]

	assert.Equal(t, resolve.PathRemoteGateway, def.Route)
	assert.Equal(t, sni.PeeredServiceSNI("billing", "", "", "dc1-default", peerTD), def.SNI, "built with the peer's trust domain and its name for us")
	assert.Equal(t, []string{"127.0.3.5:8443"}, def.Dial)
	assert.Equal(t, []string{"web sidecar", "gateway peer webstuff", "billing peer webstuff"}, def.Hops)
	assert.Empty(t, def.Warnings)
	assert.Empty(t, def.Datacenter)

	assert.Equal(t, resolve.PathRemoteGateway, none.Route)
	assert.Equal(t, api.MeshGatewayModeNone, none.Mode)
	assert.Contains(t, none.Warnings[0], `mode "none" from upstream is treated as "remote"`)
	assert.Equal(t, sni.PeeredServiceSNI("billing", "ns1", "", "dc1-default", peerTD), none.SNI)

	assert.Equal(t, resolve.PathLocalGateway, local.Route)
	assert.Equal(t, []string{"127.0.1.5:8443"}, local.Dial)
	assert.Equal(t, []string{"web sidecar", "gateway dc1", "gateway peer webstuff", "billing peer webstuff"}, local.Hops)

	assert.Empty(t, stranger.SNI)
	assert.Contains(t, stranger.Warnings[0], `peer "stranger" is unknown`)
}

// An import whose every gateway is critical (its entries mirror the
// exporting gateway's check) has no healthy instance, as the sidecar's
// failover order needs; its SNI is still the peer's. Beside it, an import
// with one healthy gateway and one critical is planned to the healthy one.
func TestPeeredUpstreamOfCriticalGateways(t *testing.T) {
	billing := sni.PeeredServiceSNI("billing", "", "", "dc1-default", peerTD)
	ledger := sni.PeeredServiceSNI("ledger", "", "", "dc1-default", peerTD)
	st, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: td,
		Peers: map[string]mesh.Peer{"webstuff": {Name: "webstuff", TrustDomain: peerTD, NameAtPeer: "dc1-default",
			Gateways: []string{"127.0.3.5:8443"},
			Imports: []mesh.ImportedService{
				{Name: "billing", SNI: billing, Gateways: []string{"127.0.3.5:8443"}, UnhealthyGateways: []string{"127.0.3.6:8443"}},
				{Name: "ledger", SNI: ledger, UnhealthyGateways: []string{"127.0.3.5:8443", "127.0.3.6:8443"}},
			}}}})
	require.NoError(t, err)
	v := st.View()
	im, ok := v.Peers["webstuff"].Import("ledger", "")
	require.True(t, ok)
	assert.Empty(t, im.Gateways, "a static view lends the peer's gateways to no import whose gateways are all critical")
	web := mesh.Instance{Service: "web", Name: "web-sidecar-proxy", Proxy: &api.AgentServiceConnectProxyConfig{}}
	plan := func(service string) resolve.Plan {
		return resolve.PlanUpstream(v, web, api.Upstream{DestinationName: service, DestinationPeer: "webstuff"})
	}
	b, l := plan("billing"), plan("ledger")
	assert.Equal(t, billing, b.SNI)
	assert.Equal(t, []string{"127.0.3.5:8443"}, b.Dial)
	assert.Equal(t, 1, b.Healthy)
	assert.Equal(t, ledger, l.SNI)
	assert.Zero(t, l.Healthy)
}

func TestStaticDefaults(t *testing.T) {
	src := resolvetest.Load(t, config.StaticOptions{}, seed("global-local.hcl"))
	v := src.View()
	assert.Equal(t, "dc1", v.Datacenter)
	assert.Equal(t, config.DefaultTrustDomain, v.TrustDomain)
	assert.Equal(t, "default", v.Partition)

	src = resolvetest.Load(t, config.StaticOptions{Datacenter: "east", TrustDomain: "x.consul"}, seed("global-local.hcl"))
	assert.Equal(t, "east", src.View().Datacenter)
	assert.Equal(t, "x.consul", src.View().TrustDomain)

	src = resolvetest.Load(t, config.StaticOptions{Datacenter: "east"}, topology)
	assert.Equal(t, "dc1", src.View().Datacenter, "the topology's datacenter wins")
	assert.Equal(t, []string{"dc1", "secondary"}, src.View().Datacenters())
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := readFile(path)
	require.NoError(t, err)
	return string(b)
}

// The planner follows service-resolvers where the sidecar's SNI depends on
// them: a DefaultSubset names the subset in the SNI and picks its endpoints;
// a Redirect moves the target to another service and datacenter, whose own
// DefaultSubset then applies.
func TestPlanFollowsServiceResolvers(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{
		"resolvers.yaml": `Kind: service-resolver
Name: api
DefaultSubset: v1
Subsets:
  v1: {Filter: "Service.Meta.version == v1"}
---
Kind: service-resolver
Name: db
Redirect: {Service: api, Datacenter: secondary}
`,
		"t.hcl": `topology {
  services = [
    { name = "api", subset = "v1", addresses = ["127.0.1.20:21000"] },
  ]
}`,
		"web.hcl": webProxy("", `{ destination_name = "api", local_bind_port = 1 }, { destination_name = "db", local_bind_port = 2 }`),
	})
	src := resolvetest.Load(t, config.StaticOptions{TrustDomain: td}, topology, dir)
	api1 := resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "api"})
	resolvetest.Expect(t, api1, resolvetest.Want{Route: resolve.PathDirect, Subset: "v1",
		SNI: sni.ServiceSNI("api", "v1", "", "", "dc1", td), Dial: []string{"127.0.1.20:21000"}})
	assert.Equal(t, []string{`service-resolver "api": default subset "v1"`}, api1.Resolver)
	assert.False(t, api1.Redirected())
	assert.Equal(t, "api", api1.Target.Service)

	db := resolvetest.PlanTo(t, src, "web", resolvetest.Upstream{Name: "db"})
	resolvetest.Expect(t, db, resolvetest.Want{Route: resolve.PathDirect, Subset: "v1",
		SNI: sni.ServiceSNI("api", "v1", "", "", "secondary", td)})
	assert.True(t, db.Redirected())
	assert.Equal(t, "api", db.Target.Service)

	// The JSON is one flat object whatever Plan embeds: "target" only for
	// a redirected upstream, the primary target's fields beside the plan's.
	for _, c := range []struct {
		plan   resolve.Plan
		target any
	}{{api1, nil}, {db, "api"}} {
		b, err := json.Marshal(c.plan)
		require.NoError(t, err)
		var got map[string]any
		require.NoError(t, json.Unmarshal(b, &got))
		assert.Equal(t, c.target, got["target"], string(b))
		assert.Equal(t, "web", got["service"], "the downstream service, as before")
		assert.Equal(t, "v1", got["subset"])
		assert.Equal(t, "direct", got["route"])
		assert.Contains(t, got, "source")
	}
	assert.Equal(t, "secondary", db.Datacenter)
	assert.Equal(t, []string{`service-resolver "db" redirects to service api, datacenter secondary`, `service-resolver "api": default subset "v1"`}, db.Resolver)
}
