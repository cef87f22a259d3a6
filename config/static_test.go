package config_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Datacenter names in files are lower-cased as Consul does, and a View built
// by hand with an upper-case one is refused with the name to use.
func TestDatacenterNamesAreLowerCased(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "topology.hcl"), []byte(`topology {
  datacenter = "DC1"
  services = [{ name = "api", addresses = ["127.0.0.1:9001"] }]
  gateways = [{ datacenter = "DC2", wan_addresses = ["127.0.0.1:9002"] }]
}
`), 0o600))
	src, err := config.LoadStatic(config.StaticOptions{}, dir)
	require.NoError(t, err)
	v := src.View()
	assert.Equal(t, "dc1", v.Datacenter)
	assert.Contains(t, v.Gateways, mesh.Location{Datacenter: "dc2", Partition: "default"})
	route, err := (&routing.MeshRouter{Source: src}).Route(context.Background(), &sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", config.DefaultTrustDomain)})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:9001"}, route.Targets)

	bad := &mesh.View{Datacenter: "DC1", TrustDomain: config.DefaultTrustDomain}
	assert.ErrorContains(t, bad.Validate(), `datacenter "DC1" has upper-case letters`)
}

// A View built by hand, with empty namespaces, partitions and datacenters,
// routes as the same topology from files does.
func TestStaticViewRoutesLikeFiles(t *testing.T) {
	src, err := config.StaticView(&mesh.View{
		Datacenter:  "dc1",
		TrustDomain: config.DefaultTrustDomain,
		Services:    map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: {{Address: "127.0.0.1:9001"}}},
		Gateways:    map[mesh.Location][]mesh.Endpoint{{Datacenter: "dc2"}: {{WAN: "127.0.0.1:9002"}}},
	})
	require.NoError(t, err)
	r := &routing.MeshRouter{Source: src}
	for name, want := range map[string]string{
		sni.ServiceSNI("api", "", "", "", "dc1", config.DefaultTrustDomain): "127.0.0.1:9001",
		sni.ServiceSNI("web", "", "", "", "dc2", config.DefaultTrustDomain): "127.0.0.1:9002",
	} {
		got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
		require.NoError(t, err, name)
		assert.Equal(t, []string{want}, got.Targets, name)
	}
	_, err = config.StaticView(&mesh.View{Datacenter: "dc1"})
	assert.ErrorContains(t, err, "no trust domain")
}

// The topology document is only the file form of a View: a topology loaded
// from files and the same topology written as a View in Go, with its empty
// fields left empty, come out of the one normalisation identical.
func TestFilesAndGoViewsAreOneModel(t *testing.T) {
	resolver := `Kind = "service-resolver"
Name = "api"
Subsets = { v2 = { Filter = "Service.Meta.version == v2" } }
`
	set, err := config.Parse("topology.hcl", []byte(`topology {
  datacenter = "DC1"
  trust_domain = "`+config.DefaultTrustDomain+`"
  services = [
    { name = "api", addresses = ["127.0.0.1:9001"], wan_addresses = ["127.0.0.2:9001"] },
    { name = "api", subset = "v2", addresses = ["127.0.0.1:9003"] },
    { name = "db", namespace = "ops", datacenter = "DC2", addresses = ["127.0.0.1:9004"] },
  ]
  gateways = [{ datacenter = "DC2", wan_addresses = ["127.0.0.1:9002"] }]
  servers = ["127.0.0.1:8503"]
  peers = [{ name = "other", trust_domain = "11111111-2222-3333-4444-555555555555.consul", name_at_peer = "here",
             gateways = ["127.0.0.3:8443"], imports = ["billing", "ops/ledger"] }]
}
`))
	require.NoError(t, err)
	entries, err := config.Parse("resolver.hcl", []byte(resolver))
	require.NoError(t, err)
	set.ServiceResolvers = entries.ServiceResolvers
	fromFiles, err := config.NewStatic(set, config.StaticOptions{})
	require.NoError(t, err)

	fromGo, err := config.StaticView(&mesh.View{
		Datacenter:  "DC1",
		TrustDomain: config.DefaultTrustDomain,
		Resolvers:   entries.ServiceResolvers,
		Routers:     entries.ServiceRouters,
		Splitters:   entries.ServiceSplitters,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{
			{Name: "api"}: {{Address: "127.0.0.1:9001", WAN: "127.0.0.2:9001"}},
			{Name: "db", Namespace: "ops", Datacenter: "DC2"}: {{Address: "127.0.0.1:9004"}},
		},
		Subsets:  map[mesh.ServiceKey]map[string][]mesh.Endpoint{{Name: "api"}: {"v2": {{Address: "127.0.0.1:9003"}}}},
		Gateways: map[mesh.Location][]mesh.Endpoint{{Datacenter: "DC2"}: {{WAN: "127.0.0.1:9002"}}},
		Servers:  []string{"127.0.0.1:8503"},
		Peers: map[string]mesh.Peer{"other": {Name: "other", TrustDomain: "11111111-2222-3333-4444-555555555555.consul",
			NameAtPeer: "here", Gateways: []string{"127.0.0.3:8443"},
			Imports: []mesh.ImportedService{{Name: "billing"}, {Name: "ledger", Namespace: "ops"}}}},
	})
	require.NoError(t, err)

	a, b := fromFiles.View(), fromGo.View()
	// Fields the files fill and a View built in Go need not.
	a.Instances = nil
	assert.Equal(t, a, b)
	billing, ok := b.Peers["other"].Import("billing", "")
	require.True(t, ok)
	assert.Equal(t, "billing.default.default.here.external.11111111-2222-3333-4444-555555555555.consul", billing.SNI)
	assert.Equal(t, []string{"127.0.0.3:8443"}, billing.Gateways)

	_, err = config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: config.DefaultTrustDomain,
		Subsets: map[mesh.ServiceKey]map[string][]mesh.Endpoint{{Name: "web"}: {"canary": {{Address: "127.0.0.1:9005"}}}}})
	assert.ErrorContains(t, err, `subset "canary" of service "web"`)
}

// A proxy instance carries its own address and port, and a sidecar_service
// gets the agent's defaults: the parent's address, and the parent at
// 127.0.0.1 on its port as the local application, unless it says otherwise.
func TestInstanceOfAddressesAndLocalApplication(t *testing.T) {
	proxy, ok := config.InstanceOf(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy, Name: "web-sidecar-proxy",
		Address: "10.0.0.5", Port: 21000,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", LocalServicePort: 8080}}, "test")
	require.True(t, ok)
	assert.Equal(t, "10.0.0.5", proxy.Address)
	assert.Equal(t, 21000, proxy.Port)
	assert.Equal(t, "", proxy.Proxy.LocalServiceAddress, "a connect-proxy registration gets no defaults from a parent")

	parent := &api.AgentServiceRegistration{Name: "api", Address: "10.0.0.6", Port: 9090,
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{Port: 21001}}}
	sc, ok := config.InstanceOf(parent, "test")
	require.True(t, ok)
	assert.Equal(t, "api-sidecar-proxy", sc.Name)
	assert.Equal(t, "10.0.0.6", sc.Address, "the parent's address")
	assert.Equal(t, 21001, sc.Port)
	assert.Equal(t, "127.0.0.1", sc.Proxy.LocalServiceAddress)
	assert.Equal(t, 9090, sc.Proxy.LocalServicePort, "the parent's port")
	assert.Nil(t, parent.Connect.SidecarService.Proxy, "the registration is left as it was")

	parent.Connect.SidecarService = &api.AgentServiceRegistration{Address: "10.0.0.7",
		Proxy: &api.AgentServiceConnectProxyConfig{LocalServiceAddress: "10.0.0.8", LocalServicePort: 7070}}
	sc, ok = config.InstanceOf(parent, "test")
	require.True(t, ok)
	assert.Equal(t, "10.0.0.7", sc.Address)
	assert.Equal(t, 0, sc.Port, "no port: the agent would pick one")
	assert.Equal(t, "10.0.0.8", sc.Proxy.LocalServiceAddress)
	assert.Equal(t, 7070, sc.Proxy.LocalServicePort)
}

// A topology listing a subset no resolver defines is refused, naming it.
func TestStaticRefusesAnUndefinedSubset(t *testing.T) {
	dir := resolvetest.Dir(t, map[string]string{"t.hcl": `topology {
  services = [{ name = "api", subset = "v2", addresses = ["127.0.0.1:2"] }]
}`})
	_, err := config.LoadStatic(config.StaticOptions{}, dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `subset "v2" of service "api"`)
}

// A topology's weights and critical addresses reach the View: the weights
// on the endpoints, the critical instances beside the healthy ones.
func TestTopologyWeightsAndCriticalInstances(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "topology.hcl"), []byte(`topology {
  services = [
    { name = "api", addresses = ["127.0.0.1:9001", "127.0.0.1:9002"], weights = [3, 1], critical_addresses = ["127.0.0.1:9003"] },
    { name = "api", subset = "v1", addresses = ["127.0.0.1:9001"], critical_addresses = ["127.0.0.1:9004"] },
  ]
}
`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "resolver.hcl"), []byte("Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = { Filter = \"Service.Meta.version == v1\" } }\n"), 0o600))
	src, err := config.LoadStatic(config.StaticOptions{}, dir)
	require.NoError(t, err)
	v := src.View()
	assert.Equal(t, []mesh.Endpoint{{Address: "127.0.0.1:9001", Weight: 3}, {Address: "127.0.0.1:9002", Weight: 1}}, v.Endpoints("api", "", "", ""))
	assert.Equal(t, []mesh.Endpoint{{Address: "127.0.0.1:9003"}}, v.UnhealthyEndpoints("api", "", "", "", ""))
	assert.Equal(t, []mesh.Endpoint{{Address: "127.0.0.1:9004"}}, v.UnhealthyEndpoints("api", "v1", "", "", ""))
	addrs, weights := mesh.Weighted(v.Endpoints("api", "", "", ""), false)
	assert.Equal(t, []string{"127.0.0.1:9001", "127.0.0.1:9002"}, addrs)
	assert.Equal(t, []int{3, 1}, weights)

	for body, want := range map[string]string{
		`{ name = "api", addresses = ["127.0.0.1:9001"], weights = [1, 2] }`: `service "api": 2 weights for 1 endpoints`,
		`{ name = "api", addresses = ["127.0.0.1:9001"], weights = [0] }`:    `service "api": weight 0 of 127.0.0.1:9001: want 1 or more`,
		`{ name = "api", critical_addresses = ["127.0.0.1"] }`:               `127.0.0.1`,
	} {
		bad := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(bad, "t.hcl"), []byte("topology {\n  services = ["+body+"]\n}\n"), 0o600))
		_, err := config.LoadStatic(config.StaticOptions{}, bad)
		assert.ErrorContains(t, err, want, body)
	}
}

// An exported-services entry with Name "*" exports every typical service
// of the namespace the files know, as Consul expands it from its catalog:
// the topology's services and the service definitions, not consul, not
// proxies.
func TestWildcardExportsFromFiles(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "topology.hcl"), []byte(`topology {
  services = [
    { name = "api", addresses = ["127.0.0.1:9001"] },
    { name = "db", critical_addresses = ["127.0.0.1:9002"] },
    { name = "consul", addresses = ["127.0.0.1:8300"] },
    { name = "web", datacenter = "dc2", addresses = ["127.0.0.2:9001"] },
  ]
}
`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "defs.hcl"), []byte(`service {
  name = "billing"
  port = 9100
  connect { sidecar_service {} }
}
`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "exports.hcl"), []byte(`Kind = "exported-services"
Name = "default"
Services = [
  { Name = "*", Consumers = [{ Peer = "peer-a" }] },
  { Name = "api", Consumers = [{ Peer = "peer-b" }] },
]
`), 0o600))
	src, err := config.LoadStatic(config.StaticOptions{}, dir)
	require.NoError(t, err)
	k := func(name string) mesh.ServiceKey {
		return mesh.ServiceKey{Name: name, Namespace: "default", Partition: "default", Datacenter: "dc1"}
	}
	assert.Equal(t, map[mesh.ServiceKey][]string{k("api"): {"peer-a", "peer-b"}, k("db"): {"peer-a"}, k("billing"): {"peer-a"}},
		src.View().Exports)
	for _, name := range []string{"api", "db", "billing"} {
		assert.True(t, src.View().ExportedTo(name, "", "peer-a"), name)
	}
	assert.False(t, src.View().ExportedTo("consul", "", "peer-a"))
}
