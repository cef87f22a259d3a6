package resolve_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

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
