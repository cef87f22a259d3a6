package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-multierror"
	"github.com/meshgate/meshgate/mesh"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func seed(t *testing.T, name string) *Set {
	t.Helper()
	s, err := Load(filepath.Join("testdata", "seeds", name))
	require.NoError(t, err)
	return s
}

// Every example of the seed documents, in both of their formats.
func TestSeedProxyDefaults(t *testing.T) {
	for _, f := range []string{"global-local.hcl", "global-local.yaml"} {
		s := seed(t, f)
		require.NotNil(t, s.ProxyDefaults, f)
		assert.Equal(t, api.ProxyDefaults, s.ProxyDefaults.Kind, f)
		assert.Equal(t, "global", s.ProxyDefaults.Name, f)
		assert.Equal(t, api.MeshGatewayModeLocal, s.ProxyDefaults.MeshGateway.Mode, f)
	}
}

func TestSeedServiceDefaults(t *testing.T) {
	for _, f := range []string{"web-defaults-local.hcl", "web-defaults-local.yaml"} {
		s := seed(t, f)
		require.Contains(t, s.ServiceDefaults, mesh.KeyOf("web", "", ""), f)
		assert.Equal(t, api.MeshGatewayModeLocal, s.ServiceDefaults[mesh.KeyOf("web", "", "")].MeshGateway.Mode, f)
	}
}

func TestSeedInstance(t *testing.T) {
	hcl := seed(t, "instance-remote.hcl")
	require.Len(t, hcl.Services, 2, "the HCL example holds the proxy registration and the inline sidecar alternative")
	proxy := hcl.Services[0]
	assert.Equal(t, "web-sidecar-proxy", proxy.Name)
	assert.Equal(t, api.ServiceKindConnectProxy, proxy.Kind)
	assert.Equal(t, 8181, proxy.Port)
	assert.Equal(t, "web", proxy.Proxy.DestinationServiceName)
	assert.Equal(t, api.MeshGatewayModeRemote, proxy.Proxy.MeshGateway.Mode)
	assert.Equal(t, []api.Upstream{{DestinationName: "api", Datacenter: "secondary", LocalBindPort: 10000}}, proxy.Proxy.Upstreams)
	assert.Equal(t, 1, proxy.Line)

	inline := hcl.Services[1]
	assert.Equal(t, "web", inline.Name)
	require.NotNil(t, inline.Connect)
	require.NotNil(t, inline.Connect.SidecarService)
	sp := inline.Connect.SidecarService.Proxy
	require.NotNil(t, sp)
	assert.Equal(t, api.MeshGatewayModeRemote, sp.MeshGateway.Mode)
	assert.Equal(t, "api", sp.Upstreams[0].DestinationName)

	yml := seed(t, "instance-remote.yaml")
	require.Len(t, yml.Services, 1)
	p := yml.Services[0].Proxy
	assert.Equal(t, api.MeshGatewayModeRemote, p.MeshGateway.Mode)
	// The seed's YAML says 100 where its HCL says 10000; we load what it says.
	assert.Equal(t, []api.Upstream{{DestinationName: "api", Datacenter: "secondary", LocalBindPort: 100}}, p.Upstreams)
}

func TestSeedUpstreams(t *testing.T) {
	for _, f := range []string{"upstreams.hcl", "upstreams.yaml"} {
		s := seed(t, f)
		require.Len(t, s.Services, 1, f)
		ups := s.Services[0].Proxy.Upstreams
		require.Len(t, ups, 3, f)
		got := map[string]api.MeshGatewayMode{}
		ports := map[string]int{}
		for _, u := range ups {
			got[u.DestinationName] = u.MeshGateway.Mode
			ports[u.DestinationName] = u.LocalBindPort
		}
		assert.Equal(t, map[string]api.MeshGatewayMode{"api": "remote", "db": "local", "logging": "none"}, got, f)
		assert.Equal(t, map[string]int{"api": 10000, "db": 10001, "logging": 10002}, ports, f)
	}
}

func TestSeedMesh(t *testing.T) {
	s := seed(t, "mesh-peering.hcl")
	require.NotNil(t, s.Mesh)
	require.NotNil(t, s.Mesh.Peering)
	assert.True(t, s.Mesh.Peering.PeerThroughMeshGateways)
}

// The seed's YAML spells Peeering: a silent decoder would leave peering
// through gateways off.
func TestSeedMeshTypo(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "bad", "mesh-peering-typo.yaml"))
	require.Error(t, err)
	msg := err.Error()
	assert.Contains(t, msg, "mesh-peering-typo.yaml:2")
	assert.Contains(t, msg, `unknown key "Peeering"`)
	assert.Contains(t, msg, `did you mean "Peering"?`)
}

func parse(t *testing.T, name, src string) (*Set, error) {
	t.Helper()
	return Parse(name, []byte(src))
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		name, file, src string
		want            []string
	}{
		{"invalid mode", "a.hcl", "Kind = \"proxy-defaults\"\nName = \"global\"\nMeshGateway {\n  Mode = \"sideways\"\n}\n",
			[]string{"a.hcl:4", `invalid mesh gateway mode "sideways"`, `"remote"`}},
		{"invalid mode in an upstream", "a.json", `{"service": {"name": "web-sidecar-proxy", "kind": "connect-proxy", "proxy": {"destination_service_name": "web",
"upstreams": [{"destination_name": "api", "mesh_gateway": {"mode": "Local"}}]}}}`,
			[]string{"a.json:2", `service.proxy.upstreams[0].mesh_gateway.mode`, `"Local"`}},
		{"the path as the file spells it", "a.json", `{"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "sideways"}}`,
			[]string{`proxy-defaults.MeshGateway.Mode`, `"sideways"`}},
		{"datacenter and peer", "a.yaml", "service:\n  name: web\n  connect:\n    sidecar_service:\n      proxy:\n        upstreams:\n          - destination_name: api\n            datacenter: dc2\n            destination_peer: other\n",
			[]string{"a.yaml:7", `datacenter "dc2"`, `destination_peer "other"`}},
		{"snake_case typo suggests snake_case", "a.hcl", "service {\n  name = \"web\"\n  conect {}\n  proxy { destination_service_nme = \"x\" }\n}\n",
			[]string{`a.hcl:3: service: unknown key "conect" (did you mean "connect"?)`, `a.hcl:4: service.proxy: unknown key "destination_service_nme" (did you mean "destination_service_name"?)`, "2 problems"}},
		{"unknown kind", "a.hcl", "Kind = \"service-default\"\nName = \"x\"\n", []string{`unknown config entry Kind "service-default"`}},
		{"neither entry nor service", "a.json", `{"Name": "x"}`, []string{`neither a config entry`, `"Name"`}},
		{"wrong type", "a.hcl", "service {\n  name = \"web\"\n  port = \"eighty\"\n}\n", []string{"a.hcl:3", "service.port: want a whole number"}},
		{"two blocks where one is allowed", "a.hcl", "Kind = \"proxy-defaults\"\nName = \"global\"\nMeshGateway { Mode = \"local\" }\nMeshGateway { Mode = \"remote\" }\n",
			[]string{"want one block, got a list of 2"}},
		{"proxy-defaults not global", "a.hcl", "Kind = \"proxy-defaults\"\nName = \"web\"\n", []string{`must be named "global"`}},
		{"same key twice", "a.json", `{"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "local"}, "mesh_gateway": {"Mode": "none"}}`,
			[]string{`key "mesh_gateway" given twice`}},
		{"connect-proxy without destination", "a.hcl", "service {\n  name = \"p\"\n  kind = \"connect-proxy\"\n}\n", []string{"no proxy.destination_service_name"}},
		{"upstream without name", "a.hcl", "service {\n  name = \"web\"\n  connect { sidecar_service { proxy { upstreams = [{ local_bind_port = 1 }] } } }\n}\n", []string{"no destination_name"}},
		{"HCL syntax", "a.hcl", "service {\n", []string{"a.hcl"}},
		{"YAML syntax", "a.yaml", "service: [\n", []string{"a.yaml"}},
		{"JSON syntax", "a.json", "{\"service\": }", []string{"a.json"}},
		{"unknown extension", "a.toml", "", []string{"unknown file type"}},
		{"default subset not defined", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nDefaultSubset = \"v9\"\nSubsets = { v1 = { Filter = \"Service.Meta.version == v1\" } }\n",
			[]string{"r.hcl:1", `service-resolver "api": DefaultSubset "v9" is not one of its Subsets`}},
		{"subset name Consul refuses", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { V1 = {} }\n", []string{`subset name "V1"`}},
		{"redirect to a peer and a datacenter", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nRedirect { Service = \"api\"\n Peer = \"p\"\n Datacenter = \"dc2\" }\n", []string{"both a Datacenter and a Peer"}},
		{"failover with datacenters and targets", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { Datacenters = [\"dc2\"], Targets = [{ Datacenter = \"dc3\" }] } }\n",
			[]string{"r.hcl:1", `service-resolver "api": Failover["*"]: Targets cannot be set with Datacenters`}},
		{"failover for a subset it does not define", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { v2 = { Datacenters = [\"dc2\"] } }\n",
			[]string{`Failover["v2"]: want "*" or one of its Subsets`}},
		{"empty failover", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { } }\n",
			[]string{`Failover["*"]: one of Service, ServiceSubset, Namespace, Targets, SamenessGroup, or Datacenters is required`}},
		{"failover target to a peer and a datacenter", "r.json", `{"Kind": "service-resolver", "Name": "api", "Failover": {"*": {"Targets": [{"Peer": "p", "Datacenter": "dc2"}, {"ServiceSubset": "v9"}]}}}`,
			[]string{`Failover["*"]: Targets[0]: Peer cannot be set with Datacenter`, `Failover["*"]: Targets[1]: ServiceSubset "v9" is not one of "api"'s Subsets`}},
		{"failover to a sameness group and datacenters", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { SamenessGroup = \"g\", Datacenters = [\"dc2\", \"\"] } }\n",
			[]string{`Failover["*"]: SamenessGroup cannot be set with Datacenters`, `Failover["*"]: Datacenters: an empty datacenter`}},
		{"failover policy unknown", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { Datacenters = [\"dc2\"], Policy = { Mode = \"random\" } } }\n",
			[]string{`Policy.Mode "random"`}},
		{"redirect to a sameness group and a subset", "r.hcl", "Kind = \"service-resolver\"\nName = \"api\"\nRedirect { SamenessGroup = \"g\"\n ServiceSubset = \"v1\" }\n",
			[]string{"Redirect.SamenessGroup cannot be set with Redirect.ServiceSubset"}},
		{"sameness group member with both", "g.hcl", "Kind = \"sameness-group\"\nName = \"g\"\nMembers = [{ Peer = \"a\", Partition = \"p\" }, { Peer = \"b\" }, { Peer = \"b\" }, {}]\n",
			[]string{`sameness-group "g": Members[0]: want exactly one of Partition and Peer`, `Members[2]: peer "b" is listed twice`, "Members[3]: want exactly one"}},
		{"two default sameness groups", "g.yaml", "Kind: sameness-group\nName: a\nDefaultForFailover: true\nMembers: [{Peer: x}]\n---\nKind: sameness-group\nName: b\nDefaultForFailover: true\nMembers: [{Peer: y}]\n",
			[]string{`sameness-group "b": DefaultForFailover: sameness-group "a" is the default already`}},
		{"second resolver", "r.yaml", "Kind: service-resolver\nName: api\n---\nKind: service-resolver\nName: api\n", []string{`a second service-resolver for "api"`}},
		{"topology bad address", "t.hcl", "topology {\n  services = [{ name = \"api\", addresses = [\"10.0.0.1\"] }]\n}\n", []string{`"10.0.0.1"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.file, c.src)
			require.Error(t, err)
			for _, w := range c.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestEveryProblemReported(t *testing.T) {
	src := `Kind = "service-defaults"
Name = "web"
Protocl = "tcp"
MeshGateway { Mode = "bad" }
UpstreamConfig {
  Overrides = [{ Name = "api", MeshGateway { Mode = "worse" } }]
  Defalts { }
}
`
	_, err := parse(t, "web.hcl", src)
	require.Error(t, err)
	var me *multierror.Error
	require.ErrorAs(t, err, &me)
	require.Len(t, me.Errors, 4, err.Error())
	var lines []int
	for _, e := range me.Errors {
		var de *Problem
		require.ErrorAs(t, e, &de)
		lines = append(lines, de.Line)
	}
	assert.ElementsMatch(t, []int{3, 4, 6, 7}, lines)
	assert.Contains(t, err.Error(), `did you mean "Protocol"?`)
	assert.Contains(t, err.Error(), `did you mean "Defaults"?`)
}

func TestLoadDirectoryAndMultiDocument(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644))
	}
	write("entries.yaml", "Kind: proxy-defaults\nName: global\nMeshGateway: {Mode: local}\n---\nKind: service-defaults\nName: api\n---\nKind: service-resolver\nName: api\nConnectTimeout: 3s\n")
	write("more.json", `[{"Kind": "service-defaults", "Name": "db", "MeshGateway": {"Mode": "remote"}}, {"Kind": "mesh", "Peering": {"PeerThroughMeshGateways": true}}]`)
	write("agent.hcl", "config_entries {\n  bootstrap = [\n    { Kind = \"service-defaults\", Name = \"web\", UpstreamConfig { Defaults { MeshGateway { Mode = \"none\" } } } }\n  ]\n}\nservices = [\n  { name = \"a\", token = \"secret-token\" },\n  { name = \"b\" },\n]\n")
	write("README.md", "not config")
	s, err := Load(dir)
	require.NoError(t, err)
	assert.Equal(t, api.MeshGatewayModeLocal, s.ProxyDefaults.MeshGateway.Mode)
	assert.ElementsMatch(t, []string{"api", "db", "web"}, keys(s.ServiceDefaults))
	assert.Equal(t, api.MeshGatewayModeNone, s.ServiceDefaults[mesh.KeyOf("web", "", "")].UpstreamConfig.Defaults.MeshGateway.Mode)
	assert.True(t, s.Mesh.Peering.PeerThroughMeshGateways)
	assert.Empty(t, s.Other)
	resolver := s.ServiceResolvers[mesh.KeyOf("api", "", "")]
	require.NotNil(t, resolver)
	assert.Equal(t, "3s", resolver.ConnectTimeout.String())
	require.Len(t, s.Services, 2)
	assert.NotContains(t, strings.ToLower(s.Services[0].Origin()), "secret")
}

func TestTopologyMerges(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.hcl"), []byte(`topology {
  datacenter = "dc1"
  trust_domain = "td.consul"
  services = [{ name = "api", addresses = ["127.0.0.1:21000"] }]
}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("topology:\n  datacenter: dc1\n  gateways:\n    - datacenter: dc2\n      wan_addresses: ['127.0.0.2:8443']\n  peers:\n    - {name: p, trust_domain: x.consul, name_at_peer: me, gateways: ['127.0.0.3:8443']}\n"), 0o644))
	s, err := Load(dir)
	require.NoError(t, err)
	top := s.Topology
	assert.Equal(t, "dc1", top.Datacenter)
	assert.Equal(t, "td.consul", top.TrustDomain)
	assert.Equal(t, []mesh.Endpoint{{Address: "127.0.0.1:21000"}}, top.Services[mesh.ServiceKey{Name: "api"}])
	assert.Equal(t, []mesh.Endpoint{{WAN: "127.0.0.2:8443"}}, top.Gateways[mesh.Location{Datacenter: "dc2"}])
	assert.Equal(t, "me", top.Peers["p"].NameAtPeer)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "d.hcl"), []byte(`topology {
  peers = [{ name = "p" }]
}`), 0o644))
	_, err = Load(dir)
	require.ErrorContains(t, err, `peer "p" listed twice`)
	require.NoError(t, os.Remove(filepath.Join(dir, "d.hcl")))

	require.NoError(t, os.WriteFile(filepath.Join(dir, "c.json"), []byte(`{"topology": {"datacenter": "dc9"}}`), 0o644))
	_, err = Load(dir)
	require.ErrorContains(t, err, `datacenter "dc9" disagrees with "dc1"`)
}

func keys[V any](m map[mesh.EntryKey]V) []string {
	var out []string
	for k := range m {
		out = append(out, k.Name)
	}
	return out
}

// Failover in every form Consul takes, and a sameness group, load into the
// consul/api types as written.
func TestFailoverAndSamenessGroupsLoad(t *testing.T) {
	set, err := parse(t, "f.hcl", `
Kind = "service-resolver"
Name = "api"
Subsets = { v1 = { Filter = "Service.Meta.version == v1" } }
Failover = {
  "*"  = { Datacenters = ["dc2", "dc3"] }
  "v1" = { Targets = [{ Datacenter = "dc2" }, { Service = "api-backup" }, { Peer = "other" }] }
}
`)
	require.NoError(t, err)
	f := set.ServiceResolvers[mesh.KeyOf("api", "", "")].Failover
	assert.Equal(t, []string{"dc2", "dc3"}, f["*"].Datacenters)
	assert.Equal(t, []api.ServiceResolverFailoverTarget{{Datacenter: "dc2"}, {Service: "api-backup"}, {Peer: "other"}}, f["v1"].Targets)

	set, err = parse(t, "g.yaml", "Kind: sameness-group\nName: g\ndefault_for_failover: true\ninclude_local: true\nMembers:\n  - Partition: default\n  - Peer: east\n")
	require.NoError(t, err)
	g := set.SamenessGroups["g"]
	require.NotNil(t, g)
	assert.True(t, g.DefaultForFailover)
	assert.True(t, g.IncludeLocal)
	assert.Equal(t, []api.SamenessGroupMember{{Partition: "default"}, {Peer: "east"}}, g.Members)
}
