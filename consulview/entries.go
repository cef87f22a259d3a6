package consulview

import (
	"context"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
	"github.com/meshgate/meshgate/mesh"
)

// listEntries lists the config entries of kind (what names the listing in
// errors) and keeps those of type T, with the index to wait on next.
func listEntries[T api.ConfigEntry](ctx context.Context, c *Source, kind, what string, index uint64) ([]T, uint64, error) {
	entries, meta, err := c.client.ConfigEntries().List(kind, c.queryOptions(ctx, index))
	if err != nil {
		return nil, index, classify(call(what, "GET /v1/config/"+kind, agenterr.ReadServices), err)
	}
	if err := filtered(call(what, "GET /v1/config/"+kind, agenterr.ReadServices), meta); err != nil {
		return nil, index, err
	}
	out := make([]T, 0, len(entries))
	for _, e := range entries {
		if t, ok := e.(T); ok {
			out = append(out, t)
		}
	}
	return out, meta.LastIndex, nil
}

func (c *Source) loadProxyDefaults(ctx context.Context, index uint64) (uint64, error) {
	entries, next, err := listEntries[*api.ProxyConfigEntry](ctx, c, api.ProxyDefaults, "listing proxy-defaults", index)
	if err != nil {
		return next, err
	}
	var global *api.ProxyConfigEntry
	for _, p := range entries {
		if p.Name == api.ProxyConfigGlobal {
			global = p
		}
	}
	c.mu.Lock()
	c.state.proxyDefaults = global
	c.publishLocked()
	c.mu.Unlock()
	return next, nil
}

// keyedEntries lists the config entries of kind as listEntries does, keyed
// as the View keys them (name, namespace, partition).
func keyedEntries[T api.ConfigEntry](ctx context.Context, c *Source, kind, what string, index uint64) (map[mesh.EntryKey]T, uint64, error) {
	entries, next, err := listEntries[T](ctx, c, kind, what, index)
	if err != nil {
		return nil, next, err
	}
	m := make(map[mesh.EntryKey]T, len(entries))
	for _, e := range entries {
		m[mesh.KeyOf(e.GetName(), e.GetNamespace(), e.GetPartition())] = e
	}
	return m, next, nil
}

// loadKeyed reads the entries of kind as keyedEntries does and stores the
// map with set, then publishes; the map is replaced, never changed, so
// Views share it.
func loadKeyed[T api.ConfigEntry](ctx context.Context, c *Source, kind, what string, index uint64, set func(*consulState, map[mesh.EntryKey]T)) (uint64, error) {
	m, next, err := keyedEntries[T](ctx, c, kind, what, index)
	if err != nil {
		return next, err
	}
	c.mu.Lock()
	set(&c.state, m)
	c.publishLocked()
	c.mu.Unlock()
	return next, nil
}

func (c *Source) loadServiceDefaults(ctx context.Context, index uint64) (uint64, error) {
	return loadKeyed(ctx, c, api.ServiceDefaults, "listing service-defaults", index,
		func(s *consulState, m map[mesh.EntryKey]*api.ServiceConfigEntry) { s.serviceDefaults = m })
}

func (c *Source) loadRouters(ctx context.Context, index uint64) (uint64, error) {
	return loadKeyed(ctx, c, api.ServiceRouter, "listing service-routers", index,
		func(s *consulState, m map[mesh.EntryKey]*api.ServiceRouterConfigEntry) { s.routers = m })
}

func (c *Source) loadSplitters(ctx context.Context, index uint64) (uint64, error) {
	return loadKeyed(ctx, c, api.ServiceSplitter, "listing service-splitters", index,
		func(s *consulState, m map[mesh.EntryKey]*api.ServiceSplitterConfigEntry) { s.splitters = m })
}

// loadResolvers reads the service-resolver entries, keyed and shared as
// loadServiceDefaults' are; a service whose resolver changed is refetched
// (its subsets' endpoints depend on it).
func (c *Source) loadResolvers(ctx context.Context, index uint64) (uint64, error) {
	m, next, err := keyedEntries[*api.ServiceResolverConfigEntry](ctx, c, api.ServiceResolver, "listing service-resolvers", index)
	if err != nil {
		return next, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, r := range m {
		if old := c.state.resolvers[k]; old == nil || old.ModifyIndex != r.ModifyIndex {
			c.markLocked(k.Name)
		}
	}
	for k := range c.state.resolvers {
		if m[k] == nil {
			c.markLocked(k.Name)
		}
	}
	c.state.resolvers = m
	c.publishLocked()
	return next, nil
}

// resolverLocked returns the resolver of the local service name (the
// source follows the agent's namespace and partition); c.mu is held.
func (c *Source) resolverLocked(name string) *api.ServiceResolverConfigEntry {
	return c.state.resolvers[mesh.KeyOf(name, "", c.state.partition)]
}

func (c *Source) loadMesh(ctx context.Context, index uint64) (uint64, error) {
	entries, next, err := listEntries[*api.MeshConfigEntry](ctx, c, api.MeshConfig, "reading the mesh entry", index)
	if err != nil {
		return next, err
	}
	var mesh *api.MeshConfigEntry
	for _, m := range entries {
		mesh = m
	}
	c.mu.Lock()
	c.state.mesh = mesh
	started := c.started
	c.publishLocked()
	c.mu.Unlock()
	if started {
		c.reconsiderPeering(ctx) // the mesh may use peering now
	}
	return next, nil
}
