package gatewaymetrics

import (
	"testing"

	"github.com/meshgate/meshgate/gateway"
	"github.com/stretchr/testify/assert"
)

const td = "e5b08d03-bfc3-c870-1833-baddb116e648.consul"

// labelsOf returns the non-empty tag values of a cluster name by label.
func labelsOf(cluster string) (string, map[string]string) {
	name, values := clusterLabels(cluster)
	out := map[string]string{}
	for i, v := range values {
		if v != "" {
			out[consulClusterLabels[i]] = v
		}
	}
	return name, out
}

// The tags are the ones Consul's bootstrap configuration extracts, on the
// examples its source gives for them (command/connect/envoy), and
// envoy_cluster_name is Envoy's first label where they take the rest.
func TestClusterLabelsAsConsulsStatsTags(t *testing.T) {
	name, got := labelsOf("pong.default.dc2.internal." + td)
	assert.Equal(t, "pong", name)
	assert.Equal(t, map[string]string{
		"consul_destination_service": "pong", "consul_destination_namespace": "default",
		"consul_destination_datacenter": "dc2", "consul_destination_routing_type": "internal",
		"consul_destination_trust_domain": "e5b08d03-bfc3-c870-1833-baddb116e648",
		"consul_destination_target":       "pong.default.dc2", "consul_destination_full_target": "pong.default.dc2.internal.e5b08d03-bfc3-c870-1833-baddb116e648",
		"consul_service": "pong", "consul_namespace": "default", "consul_datacenter": "dc2", "consul_routing_type": "internal",
		"consul_trust_domain": "e5b08d03-bfc3-c870-1833-baddb116e648", "consul_target": "pong.default.dc2",
		"consul_full_target": "pong.default.dc2.internal.e5b08d03-bfc3-c870-1833-baddb116e648",
	}, got)

	name, got = labelsOf("v2.pong.default.partA.dc2.internal-v1." + td)
	assert.Equal(t, "v2", name)
	assert.Equal(t, "v2", got["consul_destination_service_subset"])
	assert.Equal(t, "pong", got["consul_destination_service"])
	assert.Equal(t, "partA", got["consul_destination_partition"])
	assert.Equal(t, "dc2", got["consul_destination_datacenter"])
	assert.Equal(t, "internal-v1", got["consul_destination_routing_type"])
	assert.Equal(t, "v2.pong.default.partA.dc2", got["consul_destination_target"])

	name, got = labelsOf("exported~api.default.dc1.internal." + td)
	assert.Equal(t, "exported~api", name)
	assert.Equal(t, "exported", got["consul_destination_custom_hash"])
	assert.Equal(t, "api", got["consul_destination_service"])

	// A peer's service: Consul's peer tag wants svc.[ns.]peer.external, so
	// the partition-bearing name a gateway sees gets no peer tag, and its
	// service tags read it as subset.service.namespace.peer (the optional
	// subset taken first, as Envoy's regular expressions do): Consul's
	// tags, not meshgate's.
	_, got = labelsOf("api.default.default.billing.external." + td)
	assert.Equal(t, "api", got["consul_destination_service_subset"])
	assert.Equal(t, "default", got["consul_destination_service"])
	assert.Equal(t, "external", got["consul_destination_routing_type"])
	assert.NotContains(t, got, "consul_destination_peer")
	assert.NotContains(t, got, "consul_destination_datacenter")

	// Names Consul's tags do not take keep their whole name.
	for _, n := range []string{"dc2.internal." + td, "server.dc2.consul", "node1.server.dc1.consul", "server.dc1.peering." + td} {
		name, got = labelsOf(n)
		assert.Equal(t, n, name)
		assert.Empty(t, got, n)
	}
}

func TestConsulClusterAndTCPPrefixOfEachKind(t *testing.T) {
	for _, c := range []struct {
		kind, serverName, route, cluster, prefix string
	}{
		{kindService, "api.default.dc1.internal." + td, "service api", "api.default.dc1.internal." + td, "mesh_gateway_local.default"},
		{kindService, "v1.api.default.dc1.internal." + td, "service api subset v1", "v1.api.default.dc1.internal." + td, "mesh_gateway_local.default"},
		{kindGateway, "api.default.dc2.internal." + td, "gateway dc2", "dc2.internal." + td, "mesh_gateway_remote.default.dc2"},
		{kindGateway, "dc2.internal." + td, "gateway dc2", "dc2.internal." + td, "mesh_gateway_remote.default.dc2"},
		{kindGateway, "api.default.part1.dc1.internal-v1." + td, "gateway dc1/part1", "part1.dc1.internal-v1." + td, "mesh_gateway_remote.default.part1.dc1"},
		{kindServers, "node1.server.dc2.consul", "gateway dc2", "server.dc2.consul", "mesh_gateway_remote.default.dc2"},
		{kindServers, "node1.server.dc1.consul", "server node1", "node1.server.dc1.consul", "mesh_gateway_local_server.default.dc1"},
		{kindServers, "server.dc1.consul", "servers dc1", "server.dc1.consul", "mesh_gateway_local.default"},
		{kindPeeringServers, "server.dc1.peering." + td, "peering servers dc1", "server.dc1.peering." + td, "mesh_gateway_local_peering_server.default.dc1"},
		{kindPeerServers, "server.dc1.peering.other.consul", "peer servers p", "server.dc1.peering.other.consul", "mesh_gateway_remote_peering_servers.server.dc1.peering.other.consul"},
		{kindExported, "api.default.default.billing.external." + td, "exported api to peer billing", "exported~api.default.dc1.internal." + td, "mesh_gateway_local_peered.api.default.default.dc1"},
		{kindImported, "web.default.default.us.external.other.consul", "imported web from peer p", "web.default.default.us.external.other.consul", "mesh_gateway_local.default"},
		{gateway.KindTable, "a.example", "a.example", "a.example", "mesh_gateway_local.default"},
	} {
		r := &gateway.ConnRecord{Kind: c.kind, ServerName: c.serverName, Route: c.route}
		assert.Equal(t, c.cluster, ConsulCluster(r, "dc1"), c.serverName)
		assert.Equal(t, c.prefix, tcpStatPrefix(r, "default", "dc1", false), c.serverName)
		assert.Equal(t, "mesh_gateway_local.default", tcpStatPrefix(r, "default", "dc1", true))
	}
}
