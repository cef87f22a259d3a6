package resolve_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/resolve"
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
	src, err := resolve.LoadStatic(resolve.StaticOptions{}, dir)
	require.NoError(t, err)
	v := src.View()
	assert.Equal(t, "dc1", v.Datacenter)
	assert.Contains(t, v.Gateways, resolve.Location{Datacenter: "dc2", Partition: "default"})
	route, err := (&resolve.MeshRouter{Source: src}).Route(context.Background(), &sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", resolve.DefaultTrustDomain)})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:9001"}, route.Targets)

	bad := &resolve.View{Datacenter: "DC1", TrustDomain: resolve.DefaultTrustDomain}
	assert.ErrorContains(t, bad.Validate(), `datacenter "DC1" has upper-case letters`)
}

// A View built by hand, with empty namespaces, partitions and datacenters,
// routes as the same topology from files does.
func TestStaticViewRoutesLikeFiles(t *testing.T) {
	src, err := resolve.StaticView(&resolve.View{
		Datacenter:  "dc1",
		TrustDomain: resolve.DefaultTrustDomain,
		Services:    map[resolve.ServiceKey][]resolve.Endpoint{{Name: "api"}: {{Address: "127.0.0.1:9001"}}},
		Gateways:    map[resolve.Location][]resolve.Endpoint{{Datacenter: "dc2"}: {{WAN: "127.0.0.1:9002"}}},
	})
	require.NoError(t, err)
	r := &resolve.MeshRouter{Source: src}
	for name, want := range map[string]string{
		sni.ServiceSNI("api", "", "", "", "dc1", resolve.DefaultTrustDomain): "127.0.0.1:9001",
		sni.ServiceSNI("web", "", "", "", "dc2", resolve.DefaultTrustDomain): "127.0.0.1:9002",
	} {
		got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
		require.NoError(t, err, name)
		assert.Equal(t, []string{want}, got.Targets, name)
	}
	_, err = resolve.StaticView(&resolve.View{Datacenter: "dc1"})
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
  trust_domain = "`+resolve.DefaultTrustDomain+`"
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
	fromFiles, err := resolve.NewStatic(set, resolve.StaticOptions{})
	require.NoError(t, err)

	fromGo, err := resolve.StaticView(&resolve.View{
		Datacenter:  "DC1",
		TrustDomain: resolve.DefaultTrustDomain,
		Resolvers:   entries.ServiceResolvers,
		Services: map[resolve.ServiceKey][]resolve.Endpoint{
			{Name: "api"}: {{Address: "127.0.0.1:9001", WAN: "127.0.0.2:9001"}},
			{Name: "db", Namespace: "ops", Datacenter: "DC2"}: {{Address: "127.0.0.1:9004"}},
		},
		Subsets:  map[resolve.ServiceKey]map[string][]resolve.Endpoint{{Name: "api"}: {"v2": {{Address: "127.0.0.1:9003"}}}},
		Gateways: map[resolve.Location][]resolve.Endpoint{{Datacenter: "DC2"}: {{WAN: "127.0.0.1:9002"}}},
		Servers:  []string{"127.0.0.1:8503"},
		Peers: map[string]resolve.Peer{"other": {Name: "other", TrustDomain: "11111111-2222-3333-4444-555555555555.consul",
			NameAtPeer: "here", Gateways: []string{"127.0.0.3:8443"},
			Imports: []resolve.ImportedService{{Name: "billing"}, {Name: "ledger", Namespace: "ops"}}}},
	})
	require.NoError(t, err)

	a, b := fromFiles.View(), fromGo.View()
	// Fields the files fill and a View built in Go need not: empty maps.
	a.ServiceDefaults, a.Instances = nil, nil
	assert.Equal(t, a, b)
	billing, ok := b.Peers["other"].Import("billing", "")
	require.True(t, ok)
	assert.Equal(t, "billing.default.default.here.external.11111111-2222-3333-4444-555555555555.consul", billing.SNI)
	assert.Equal(t, []string{"127.0.0.3:8443"}, billing.Gateways)

	_, err = resolve.StaticView(&resolve.View{Datacenter: "dc1", TrustDomain: resolve.DefaultTrustDomain,
		Subsets: map[resolve.ServiceKey]map[string][]resolve.Endpoint{{Name: "web"}: {"canary": {{Address: "127.0.0.1:9005"}}}}})
	assert.ErrorContains(t, err, `subset "canary" of service "web"`)
}
