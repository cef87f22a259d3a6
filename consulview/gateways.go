package consulview

import (
	"context"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
)

func (c *Source) loadDatacenters() error {
	dcs, err := c.client.Catalog().Datacenters()
	if err != nil {
		return classify(call("listing datacenters", "GET /v1/catalog/datacenters"), err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	for _, dc := range dcs {
		seen[dc] = true
		c.ensureKeyedLocked(c.dcs, "gateway names of ", dc, c.loadGatewayNames)
	}
	for dc, stop := range c.dcs {
		if !seen[dc] {
			stop()
			delete(c.dcs, dc)
			c.dropGatewaysLocked(dc, nil)
		}
	}
	return nil
}

func (c *Source) refreshDatacenters() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.DatacenterRefresh)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			_, done, ok := c.turns.take(c.ctx, false)
			if !ok {
				return
			}
			err := c.loadDatacenters()
			done()
			if err != nil {
				c.setFailing("datacenters", err)
			} else {
				c.setFailing("datacenters", nil)
			}
			c.reconsiderPeering(c.ctx) // a permission granted since
		}
	}
}

// loadGatewayNames reads the names of a datacenter's mesh gateways: they
// are found by kind, as Consul's own gateways find each other, whatever name
// they were registered with. Each name gets a watch of its instances.
func (c *Source) loadGatewayNames(ctx context.Context, dc string, index uint64) (uint64, error) {
	q := (&api.QueryOptions{Datacenter: dc, WaitIndex: index, WaitTime: waitFor(ctx),
		Filter: `ServiceKind == "` + string(api.ServiceKindMeshGateway) + `"`}).WithContext(ctx)
	names, meta, err := c.client.Catalog().Services(q)
	if err != nil {
		return index, classify(call("listing the mesh gateways of "+dc, "GET /v1/catalog/services"+dcQuery(dc), agenterr.ReadServices), err)
	}
	if err := filtered(call("listing the mesh gateways of "+dc, "GET /v1/catalog/services"+dcQuery(dc), agenterr.ReadServices), meta); err != nil {
		return index, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, live := c.dcs[dc]; !live || ctx.Err() != nil {
		return meta.LastIndex, nil
	}
	c.dropGatewaysLocked(dc, names)
	for name := range names {
		c.ensureKeyedLocked(c.gwNames, gatewaysWatch, dc+"/"+name, c.loadGateways)
	}
	c.publishLocked()
	return meta.LastIndex, nil
}

// dropGatewaysLocked stops the gateway watches of dc whose names are not in
// keep. c.mu is held.
func (c *Source) dropGatewaysLocked(dc string, keep map[string][]string) {
	for key, stop := range c.gwNames {
		d, name, _ := strings.Cut(key, "/")
		if _, ok := keep[name]; d == dc && !ok {
			stop()
			delete(c.gwNames, key)
			delete(c.state.gateways, key)
			delete(c.failing, gatewaysWatch+key)
		}
	}
}

// gatewaysWatch names the watches of one gateway service's instances in a
// datacenter (key "dc/name").
const gatewaysWatch = "gateways "

// loadGateways reads the routable instances of one mesh gateway service of
// a datacenter (key "dc/name").
func (c *Source) loadGateways(ctx context.Context, key string, index uint64) (uint64, error) {
	dc, name, _ := strings.Cut(key, "/")
	q := (&api.QueryOptions{Datacenter: dc, WaitIndex: index, WaitTime: waitFor(ctx)}).WithContext(ctx)
	entries, meta, err := c.client.Health().Service(name, "", false, q)
	if err != nil {
		return index, classify(call("reading the mesh gateways of "+dc, "GET /v1/health/service/"+name+dcQuery(dc), readAll...), err)
	}
	if err := filtered(call("reading the mesh gateways of "+dc, "GET /v1/health/service/"+name+dcQuery(dc), readAll...), meta); err != nil {
		return index, err
	}
	set := gatewaySetOf(entries)
	c.mu.Lock()
	if _, live := c.gwNames[key]; live && ctx.Err() == nil {
		c.state.gateways[key] = set
		c.publishLocked()
	}
	c.mu.Unlock()
	return meta.LastIndex, nil
}
