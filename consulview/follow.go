package consulview

import (
	"context"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
)

var _ mesh.Follower = (*Source)(nil)

// remoteService is what the view holds of a followed service of another
// datacenter.
type remoteService struct {
	key     mesh.ServiceKey
	eps     []mesh.Endpoint
	subsets map[string][]mesh.Endpoint
}

// Follow makes the view hold the healthy mesh endpoints (LAN and WAN
// addresses) of services of other datacenters, and those of their
// service-resolver subsets: what a sidecar needs to fail over to another
// datacenter, or to dial a service there directly. Each key gets a blocking
// query of its own on the other datacenter's /v1/health/connect, through the
// local agent, so a change of health there reaches the view at once. Follow
// returns once each new key has been read once, with the errors of those
// that could not be (their watches retry with backoff, and Stale names them).
// Keys of the local datacenter need nothing: the view holds it whole. A key
// stays followed until Close.
func (c *Source) Follow(ctx context.Context, keys ...mesh.ServiceKey) error {
	var errs []error
	for _, k := range keys {
		k = mesh.ServiceKeyOf(k.Name, k.Namespace, k.Partition, strings.ToLower(k.Datacenter))
		c.mu.Lock()
		_, followed := c.remote[remoteKey(k)]
		local := k.Datacenter == "" || k.Datacenter == c.state.datacenter
		if followed || local || c.ctx.Err() != nil {
			c.mu.Unlock()
			continue
		}
		key := remoteKey(k)
		c.remote[key] = func() {} // taken: another Follow of key returns at once
		c.mu.Unlock()
		idx, err := uint64(0), ctx.Err()
		if qctx, done, ok := c.turns.take(ctx, false); ok {
			idx, err = c.loadRemote(qctx, key, 0)
			done()
		}
		c.mu.Lock()
		if err != nil {
			c.failing["service "+key] = err
			c.errors++
			errs = append(errs, err)
			idx = 0
		}
		c.startKeyed(c.remote, "service ", key, idx, c.loadRemote)
		c.mu.Unlock()
	}
	return problems.Join(errs...)
}

// remoteKey is a followed service's key: "dc/namespace/partition/name".
func remoteKey(k mesh.ServiceKey) string {
	return k.Datacenter + "/" + k.Namespace + "/" + k.Partition + "/" + k.Name
}

func parseRemoteKey(key string) mesh.ServiceKey {
	parts := strings.SplitN(key, "/", 4)
	return mesh.ServiceKey{Datacenter: parts[0], Namespace: parts[1], Partition: parts[2], Name: parts[3]}
}

// loadRemote reads a followed service of another datacenter: its mesh
// endpoints, and its subsets' by the local service-resolver's filters
// (config entries are the same in every datacenter of a federation).
func (c *Source) loadRemote(ctx context.Context, key string, index uint64) (uint64, error) {
	k := parseRemoteKey(key)
	base := api.QueryOptions{Datacenter: k.Datacenter, Namespace: nonDefault(k.Namespace), Partition: nonDefault(k.Partition)}
	q := base
	q.WaitIndex, q.WaitTime = index, waitFor(ctx)
	what := "reading the mesh endpoints of " + k.Name + " in " + k.Datacenter
	entries, meta, err := c.client.Health().Connect(k.Name, "", false, (&q).WithContext(ctx))
	if err != nil {
		return index, classify(call(what, "GET /v1/health/connect/"+k.Name+dcQuery(k.Datacenter), readAll...), err)
	}
	if err := filtered(call(what, "GET /v1/health/connect/"+k.Name+dcQuery(k.Datacenter), readAll...), meta); err != nil {
		return index, err
	}
	c.mu.Lock()
	resolver := c.state.resolvers[mesh.KeyOf(k.Name, k.Namespace, k.Partition)]
	c.mu.Unlock()
	subsets, _, err := c.subsetEndpoints(ctx, k.Name, entries, resolver, &base, func(int) {})
	if err != nil {
		return index, err
	}
	rs := remoteService{key: k, subsets: subsets}
	for _, e := range entries {
		if ep, ok := endpointOf(e, false); ok {
			rs.eps = append(rs.eps, ep)
		}
	}
	c.mu.Lock()
	if _, live := c.remote[key]; live && ctx.Err() == nil {
		c.state.remote[key] = rs
		c.publishLocked()
	}
	c.mu.Unlock()
	return meta.LastIndex, nil
}

func nonDefault(s string) string {
	if s == tenancy.Default {
		return ""
	}
	return s
}
