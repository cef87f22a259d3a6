package consulview

import (
	"context"

	"github.com/hashicorp/consul/api"
)

func (c *Source) loadProxyDefaults(ctx context.Context, index uint64) (uint64, error) {
	entries, meta, err := c.client.ConfigEntries().List(api.ProxyDefaults, c.queryOptions(ctx, index))
	if err != nil {
		return index, classify("listing proxy-defaults", err)
	}
	if err := filtered("listing proxy-defaults", meta); err != nil {
		return index, err
	}
	var global *api.ProxyConfigEntry
	for _, e := range entries {
		if p, ok := e.(*api.ProxyConfigEntry); ok && p.Name == api.ProxyConfigGlobal {
			global = p
		}
	}
	c.mu.Lock()
	c.state.proxyDefaults = global
	c.publishLocked()
	c.mu.Unlock()
	return meta.LastIndex, nil
}

func (c *Source) loadServiceDefaults(ctx context.Context, index uint64) (uint64, error) {
	entries, meta, err := c.client.ConfigEntries().List(api.ServiceDefaults, c.queryOptions(ctx, index))
	if err != nil {
		return index, classify("listing service-defaults", err)
	}
	if err := filtered("listing service-defaults", meta); err != nil {
		return index, err
	}
	m := make(map[string]*api.ServiceConfigEntry, len(entries))
	for _, e := range entries {
		if s, ok := e.(*api.ServiceConfigEntry); ok {
			m[s.Name] = s
		}
	}
	c.mu.Lock()
	c.state.serviceDefaults = m
	c.publishLocked()
	c.mu.Unlock()
	return meta.LastIndex, nil
}

// loadResolvers reads the service-resolver entries; a service whose
// resolver changed is refetched (its subsets' endpoints depend on it).
func (c *Source) loadResolvers(ctx context.Context, index uint64) (uint64, error) {
	entries, meta, err := c.client.ConfigEntries().List(api.ServiceResolver, c.queryOptions(ctx, index))
	if err != nil {
		return index, classify("listing service-resolvers", err)
	}
	if err := filtered("listing service-resolvers", meta); err != nil {
		return index, err
	}
	m := make(map[string]*api.ServiceResolverConfigEntry, len(entries))
	for _, e := range entries {
		if r, ok := e.(*api.ServiceResolverConfigEntry); ok {
			m[r.Name] = r
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, r := range m {
		if old := c.state.resolvers[name]; old == nil || old.ModifyIndex != r.ModifyIndex {
			c.markLocked(name)
		}
	}
	for name := range c.state.resolvers {
		if m[name] == nil {
			c.markLocked(name)
		}
	}
	c.state.resolvers = m
	c.publishLocked()
	return meta.LastIndex, nil
}

func (c *Source) loadMesh(ctx context.Context, index uint64) (uint64, error) {
	entries, meta, err := c.client.ConfigEntries().List(api.MeshConfig, c.queryOptions(ctx, index))
	if err != nil {
		return index, classify("reading the mesh entry", err)
	}
	if err := filtered("reading the mesh entry", meta); err != nil {
		return index, err
	}
	var mesh *api.MeshConfigEntry
	for _, e := range entries {
		if m, ok := e.(*api.MeshConfigEntry); ok {
			mesh = m
		}
	}
	c.mu.Lock()
	c.state.mesh = mesh
	c.publishLocked()
	c.mu.Unlock()
	return meta.LastIndex, nil
}
