package sidecar_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing/routingtest"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Failover across datacenters on real agents: two WAN-joined datacenters
// with a meshgate gateway each, a Connect-native api in each, and a
// service-resolver failing api over to dc2. In each mode, while dc1's api
// is healthy every connection stays in dc1; once its check goes critical
// new connections reach dc2's api along the mode's path (counted at the
// instances and at the gateways); once it passes again they come back. An
// instance that is healthy but refuses connections is passed over by dial
// failure. The times from each health change to the first connection that
// follows it are logged.
func TestFailoverAcrossDatacenters(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	gw1, gw2 := routingtest.StartGateway(t, dc1.Client), routingtest.StartGateway(t, dc2.Client)
	api1 := sidecartest.StartNative(t, dc1.Client, "api", sidecartest.WatchCerts(t, dc1.Client, "api"))
	api2 := sidecartest.StartNative(t, dc2.Client, "api", sidecartest.WatchCerts(t, dc2.Client, "api"))
	_, _, err := dc1.Client.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc2"}}}}, nil)
	require.NoError(t, err)

	src, err := consulview.New(context.Background(), dc1.Client, consulview.Options{})
	require.NoError(t, err)
	t.Cleanup(src.Close)
	d := &sidecar.Dialer{Source: src, Certs: sidecartest.WatchCerts(t, dc1.Client, "web"), ConnectTimeout: 2 * time.Second,
		Instance: mesh.Instance{Service: "web", Name: "web", Proxy: &api.AgentServiceConnectProxyConfig{}}}
	dc2SNI := targetSNI(t, d, "api", "dc2")

	// dial makes one connection to api in mode, echoes through it and
	// returns the plan it followed.
	dial := func(mode api.MeshGatewayMode) (resolve.Plan, error) {
		c, plan, err := d.Dial(context.Background(), api.Upstream{DestinationName: "api", MeshGateway: api.MeshGatewayConfig{Mode: mode}})
		if err != nil {
			return plan, err
		}
		defer c.Close()
		echoes(t, c)
		return plan, nil
	}
	// servedBy dials every 5 ms until a connection is served by chain
	// target want, and returns how long that took.
	servedBy := func(mode api.MeshGatewayMode, want int, what string) time.Duration {
		start := time.Now()
		for {
			if plan, err := dial(mode); err == nil && plan.Served == want {
				return time.Since(start)
			}
			if time.Since(start) > eventually {
				t.Fatalf("timed out after %s waiting for %s", eventually, what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var failovers, failbacks []time.Duration
	for _, mode := range []api.MeshGatewayMode{api.MeshGatewayModeNone, api.MeshGatewayModeLocal, api.MeshGatewayModeRemote} {
		servedBy(mode, 0, string(mode)+": connections to stay in dc1 while its api is healthy")
		before1, before2 := api1.Accepted(), api2.Accepted()
		for range 3 {
			plan, err := dial(mode)
			require.NoError(t, err)
			require.Equal(t, 0, plan.Served, "%s: dc1's api is healthy", mode)
			require.Len(t, plan.Chain(), 2)
		}
		assert.Equal(t, 3, api1.Accepted()-before1, "%s: every connection at dc1's api", mode)
		assert.Equal(t, 0, api2.Accepted()-before2, "%s: none at dc2's api", mode)

		api1.SetHealth(t, api.HealthCritical)
		failovers = append(failovers, servedBy(mode, 1, string(mode)+": a connection to fail over to dc2"))
		// The gateways count a connection when it closes: the ones
		// servedBy made are counted before the one measured here.
		consultest.WaitFor(t, eventually, string(mode)+": the gateways to close earlier connections", func() bool { return gw1.Idle() && gw2.Idle() })
		before1, before2 = api1.Accepted(), api2.Accepted()
		g1, g2 := gw1.Count(dc2SNI), gw2.Count(dc2SNI)
		plan, err := dial(mode)
		require.NoError(t, err)
		assert.Equal(t, 1, plan.Served, mode)
		assert.Equal(t, []string{"api dc1: no healthy instances"}, plan.PassedOver, mode)
		assert.Equal(t, 0, api1.Accepted()-before1, "%s: none at dc1's critical api", mode)
		assert.Equal(t, 1, api2.Accepted()-before2, "%s: the connection at dc2's api", mode)
		through := map[api.MeshGatewayMode][2]int{api.MeshGatewayModeNone: {0, 0}, api.MeshGatewayModeLocal: {1, 1}, api.MeshGatewayModeRemote: {0, 1}}[mode]
		via1, via2 := through[0], through[1]
		consultest.WaitFor(t, eventually, string(mode)+": the gateways to count the connection", func() bool {
			return gw1.Count(dc2SNI)-g1 >= via1 && gw2.Count(dc2SNI)-g2 >= via2
		})
		assert.Equal(t, via1, gw1.Count(dc2SNI)-g1, "%s: through dc1's gateway", mode)
		assert.Equal(t, via2, gw2.Count(dc2SNI)-g2, "%s: through dc2's gateway", mode)
		t.Logf("%s: failed over along %v", mode, plan.Chain()[1].Hops)

		api1.SetHealth(t, api.HealthPassing)
		failbacks = append(failbacks, servedBy(mode, 0, string(mode)+": connections to come back to dc1"))
	}

	// Healthy in Consul's eyes but refusing connections: passed over by
	// the failed dial, in the same connection.
	api1.Stop()
	plan, err := dial(api.MeshGatewayModeLocal)
	require.NoError(t, err)
	assert.Equal(t, 1, plan.Served)
	require.Len(t, plan.PassedOver, 1)
	assert.Contains(t, plan.PassedOver[0], "connection refused")

	t.Logf("from the check going critical to the first connection served by dc2: %s", durations(failovers))
	t.Logf("from the check passing again to the first connection served by dc1: %s", durations(failbacks))
}

// targetSNI returns the SNI of service in dc as d's plans give it.
func targetSNI(t *testing.T, d *sidecar.Dialer, service, dc string) string {
	t.Helper()
	for _, target := range d.Plan(api.Upstream{DestinationName: service}).Chain() {
		if target.Datacenter == dc {
			return target.SNI
		}
	}
	t.Fatalf("no target of %s in %s", service, dc)
	return ""
}

// durations lists ds and their median.
func durations(ds []time.Duration) string {
	sorted := append([]time.Duration(nil), ds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	out := ""
	for _, d := range ds {
		out += d.Round(time.Millisecond).String() + " "
	}
	return fmt.Sprintf("%s(median %s)", out, sorted[len(sorted)/2].Round(time.Millisecond))
}
