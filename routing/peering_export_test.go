package routing_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/resolve/resolvetest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// exportTopology is cluster B in partition part (empty: default), with api
// and its neighbours.
func exportTopology(partition string) string {
	return `topology {
  datacenter   = "dc1"
  partition    = "` + partition + `"
  trust_domain = "` + tdB + `"
  services = [
    { name = "api", partition = "` + partition + `", addresses = ["127.0.20.10:21000", "127.0.20.11:21000"] },
    { name = "api", partition = "` + partition + `", subset = "v1", addresses = ["127.0.20.11:21000"] },
    { name = "api-v2", partition = "` + partition + `", addresses = ["127.0.20.20:21000"] },
    { name = "api-backup", partition = "` + partition + `", addresses = ["127.0.20.30:21000"] },
    { name = "db", addresses = ["127.0.20.40:21000"] },
    { name = "api", datacenter = "dc2", partition = "` + partition + `", addresses = ["127.0.21.10:21000"] },
  ]
  gateways = [{ datacenter = "dc2", partition = "` + partition + `", addresses = ["127.0.21.5:8443"] }]
  peers = [{ name = "cluster-a", trust_domain = "` + tdA + `" }]
}
`
}

// apiExport exports the default partition's api to cluster-a.
const apiExport = `Kind = "exported-services"
Name = "default"
Services = [{ Name = "api", Consumers = [{ Peer = "cluster-a" }] }]
`

// Each partition has its own exported-services entry, named after it (as
// Consul Enterprise keeps them); a gateway serves its own partition's
// exports only.
func TestExportsOfEachPartition(t *testing.T) {
	exports := `Kind = "exported-services"
Name = "part1"
Services = [{ Name = "api", Consumers = [{ Peer = "cluster-a" }] }]
`
	defaults := `Kind = "exported-services"
Name = "default"
Services = [{ Name = "db", Consumers = [{ Peer = "cluster-a" }] }]
`
	files := map[string]string{"topology.hcl": exportTopology("part1"), "exports.hcl": exports, "defaults.hcl": defaults,
		"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nPartition = \"part1\"\nSubsets = { v1 = {} }\n"}
	r := &routing.PeeringRouter{Source: resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))}
	targets, reason := route(t, r, sni.PeeredServiceSNI("api", "", "part1", "cluster-a", tdB))
	assert.Empty(t, reason)
	assert.ElementsMatch(t, []string{"127.0.20.10:21000", "127.0.20.11:21000"}, targets)
	_, reason = route(t, r, sni.PeeredServiceSNI("db", "", "", "cluster-a", tdB))
	assert.Equal(t, routing.ReasonNotExported, reason, "the default partition's export, not this gateway's partition")

	// The default partition's gateway serves db, not part1's api.
	files["topology.hcl"] = exportTopology("")
	delete(files, "api.hcl")
	files["api.hcl"] = "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\n"
	r = &routing.PeeringRouter{Source: resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))}
	targets, reason = route(t, r, sni.PeeredServiceSNI("db", "", "", "cluster-a", tdB))
	assert.Empty(t, reason)
	assert.Equal(t, []string{"127.0.20.40:21000"}, targets)
	_, reason = route(t, r, sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB))
	assert.Equal(t, routing.ReasonNotExported, reason)

	// One entry per partition.
	_, err := config.Parse("twice.yaml", []byte("Kind: exported-services\nName: part1\n---\nKind: exported-services\nName: part1\n"))
	assert.ErrorContains(t, err, `a second exported-services entry for partition "part1"`)
}

// A peer's connection to an exported service follows the service's
// discovery chain as Consul's gateway compiles it for exports
// (makeExportedUpstreamClustersForMeshGateway): the resolver's
// DefaultSubset, a Redirect to another local service, its ConnectTimeout;
// never its failover targets (mapDiscoChainTargets: failover only when not
// for a mesh gateway), so a primary without healthy endpoints is refused
// even with a healthy failover target beside it. A primary in another
// datacenter, partition or peer is left out, as Consul's gateway leaves it
// out, and refused with a reason that names it.
func TestExportedServiceFollowsItsResolver(t *testing.T) {
	name := sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB)
	for _, tc := range []struct {
		what, resolver string
		targets        []string
		timeout        time.Duration
		reason, msg    string
	}{
		{"the default subset", "DefaultSubset = \"v1\"\nConnectTimeout = \"3s\"\n", []string{"127.0.20.11:21000"}, 3 * time.Second, "", ""},
		{"a redirect to another service", "Redirect { Service = \"api-v2\" }\n", []string{"127.0.20.20:21000"}, 0, "", ""},
		{"no failover while the primary has endpoints", "DefaultSubset = \"v1\"\nFailover = { \"*\" = { Targets = [{ Datacenter = \"dc2\" }, { Service = \"api-backup\" }] } }\n",
			[]string{"127.0.20.11:21000"}, 0, "", ""},
		{"a redirect to another datacenter", "Redirect { Datacenter = \"dc2\" }\n", nil, 0, routing.ReasonUnknownService,
			`exported service "api" resolves to api dc2, in another datacenter, partition or peer`},
	} {
		t.Run(tc.what, func(t *testing.T) {
			files := map[string]string{"topology.hcl": exportTopology(""), "exports.hcl": apiExport,
				"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\n" + tc.resolver}
			r := &routing.PeeringRouter{Source: resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))}
			got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
			if tc.reason != "" {
				_, reason := route(t, r, name)
				assert.Equal(t, tc.reason, reason)
				assert.ErrorContains(t, err, tc.msg)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.targets, got.Targets)
			assert.Equal(t, tc.timeout, got.ConnectTimeout)
			assert.Equal(t, routing.RouteExportedService, got.Kind)
		})
	}
}

// Consul's gateway never fails an export over, and keeps no panic
// threshold on an export's cluster (HealthyPanicThreshold 0): with api's
// instances all critical the peer's connection is refused, though its
// resolver names a healthy failover target; with one healthy of four, only
// that one is dialled.
func TestExportsNeverFailOverNorPanic(t *testing.T) {
	topology := `topology {
  trust_domain = "` + tdB + `"
  services = [
    { name = "api", critical_addresses = ["127.0.20.10:21000", "127.0.20.11:21000"] },
    { name = "api-backup", addresses = ["127.0.20.30:21000"] },
    { name = "web", addresses = ["127.0.20.50:21000"], critical_addresses = ["127.0.20.51:21000", "127.0.20.52:21000", "127.0.20.53:21000"] },
  ]
  peers = [{ name = "cluster-a", trust_domain = "` + tdA + `" }]
}
`
	files := map[string]string{"topology.hcl": topology,
		"exports.hcl":  "Kind = \"exported-services\"\nName = \"default\"\nServices = [{ Name = \"*\", Consumers = [{ Peer = \"cluster-a\" }] }]\n",
		"resolver.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { Service = \"api-backup\" } }\n"}
	r := &routing.PeeringRouter{Source: resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))}
	name := sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB)
	_, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
	_, reason := route(t, r, name)
	assert.Equal(t, routing.ReasonUnknownService, reason)
	assert.ErrorContains(t, err, `exported service "api" (namespace "default") has no healthy mesh endpoints in dc1 (its chain's target: api dc1); `+
		`its failover targets (api-backup dc1) are not used for a peer's connections, as Consul's gateway never fails an export over`)

	targets, reason := route(t, r, sni.PeeredServiceSNI("web", "", "", "cluster-a", tdB))
	assert.Empty(t, reason, "web is exported by the wildcard")
	assert.Equal(t, []string{"127.0.20.50:21000"}, targets, "one healthy of four: no panic on an export")
	targets, reason = route(t, r, sni.PeeredServiceSNI("api-backup", "", "", "cluster-a", tdB))
	assert.Empty(t, reason, "api-backup too, by the wildcard")
	assert.Equal(t, []string{"127.0.20.30:21000"}, targets)
}

// An export whose protocol is http, http2 or grpc is one Consul's gateway
// terminates, to apply the service's routers, splitters and L7
// intentions. meshgate does not terminate it, so it refuses it with a
// reason that says what to change, unless told to pass it through as TCP.
// The protocol is the service's service-defaults', else proxy-defaults',
// else tcp, as Consul compiles it.
func TestL7ExportsAreRefusedUnlessPassedThrough(t *testing.T) {
	name := sni.PeeredServiceSNI("api", "", "", "cluster-a", tdB)
	for _, tc := range []struct {
		what   string
		files  map[string]string
		reason string
	}{
		{"tcp by default", nil, ""},
		{"http from service-defaults", map[string]string{"sd.hcl": "Kind = \"service-defaults\"\nName = \"api\"\nProtocol = \"http\"\n"}, routing.ReasonL7Export},
		{"grpc from proxy-defaults", map[string]string{"pd.hcl": "Kind = \"proxy-defaults\"\nName = \"global\"\nConfig { protocol = \"grpc\" }\n"}, routing.ReasonL7Export},
		{"tcp in service-defaults over http in proxy-defaults", map[string]string{
			"pd.hcl": "Kind = \"proxy-defaults\"\nName = \"global\"\nConfig { protocol = \"http2\" }\n",
			"sd.hcl": "Kind = \"service-defaults\"\nName = \"api\"\nProtocol = \"tcp\"\n"}, ""},
	} {
		t.Run(tc.what, func(t *testing.T) {
			files := map[string]string{"topology.hcl": exportTopology(""), "exports.hcl": apiExport,
				"api.hcl": "Kind = \"service-resolver\"\nName = \"api\"\nSubsets = { v1 = {} }\n"}
			for k, v := range tc.files {
				files[k] = v
			}
			src := resolvetest.Load(t, config.StaticOptions{}, resolvetest.Dir(t, files))
			_, reason := route(t, &routing.PeeringRouter{Source: src}, name)
			assert.Equal(t, tc.reason, reason)
			if tc.reason == "" {
				return
			}
			_, err := (&routing.PeeringRouter{Source: src}).Route(context.Background(), &sni.ClientHello{ServerName: name})
			assert.ErrorContains(t, err, `is exported to peer "cluster-a" with protocol`)
			assert.ErrorContains(t, err, "PassThroughL7Exports")
			targets, reason := route(t, &routing.PeeringRouter{Source: src, PassThroughL7Exports: true}, name)
			assert.Empty(t, reason)
			assert.ElementsMatch(t, []string{"127.0.20.10:21000", "127.0.20.11:21000"}, targets, "passed through as TCP")
		})
	}
}
