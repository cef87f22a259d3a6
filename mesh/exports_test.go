package mesh_test

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
	"github.com/stretchr/testify/assert"
)

// Wildcard exports are every typical service of the namespace, consul
// excepted, consumers merged; sameness groups stand for their peers.
func TestResolveExports(t *testing.T) {
	services := []mesh.ServiceKey{{Name: "api"}, {Name: "web"}, {Name: "consul"}, {Name: "db", Namespace: "ns1"},
		{Name: "other", Partition: "part1"}}
	e := &api.ExportedServicesConfigEntry{Name: "default", Services: []api.ExportedService{
		{Name: "*", Consumers: []api.ServiceConsumer{{Peer: "peer-b"}, {Partition: "part2"}}},
		{Name: "api", Consumers: []api.ServiceConsumer{{Peer: "peer-a"}, {Peer: "peer-b"}, {SamenessGroup: "g"}}},
		{Name: "db", Namespace: "*", Consumers: []api.ServiceConsumer{{Peer: "peer-c"}}},
	}}
	groups := map[string]*api.SamenessGroupConfigEntry{"g": {Name: "g", Members: []api.SamenessGroupMember{{Peer: "peer-d"}, {Partition: "part3"}}}}
	got := mesh.ResolveExports(e, "", services, groups)
	assert.Equal(t, map[mesh.ServiceKey][]string{
		{Name: "api", Namespace: "default", Partition: "default"}: {"peer-a", "peer-b", "peer-d"},
		{Name: "web", Namespace: "default", Partition: "default"}: {"peer-b"},
		{Name: "db", Namespace: "ns1", Partition: "default"}:      {"peer-c"},
	}, got)
	assert.Nil(t, mesh.ResolveExports(nil, "", services, nil))
}
