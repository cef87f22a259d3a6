package consulview

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
)

// How the local catalog is followed with a fixed number of agent
// connections, however many services there are:
//
//   - one blocking query on /v1/catalog/services (typical services only: the
//     names whose mesh endpoints can be routed) says which services exist;
//   - one blocking query on /v1/health/state/any, filtered to the checks
//     that are not passing, says when a check's status changes; they are
//     compared with the last answer's, and only the services whose checks
//     (or whose nodes' checks) changed are refetched;
//   - a catalog change that neither list explains (an instance registered
//     or moved without checks of its own) refetches every service once
//     SweepDelay has passed without an explanation;
//   - Options.Fetchers workers refetch the services marked so, with plain
//     (non-blocking) queries: /v1/health/connect/<name>, and once more per
//     service-resolver subset with the subset's Filter, evaluated by Consul.
//
// A service's proxies are learnt from its answers; a check of a proxy not
// seen yet is classified with /v1/catalog/service/<name> once.
type catalog struct {
	names    map[string]bool            // typical services in the catalog, "consul" excepted
	proxyOf  map[string]string          // service name -> destination ("" when not a proxy)
	onNode   map[string]map[string]bool // node -> services with endpoints there
	nodesOf  map[string][]string        // service -> nodes of its endpoints
	prints   map[string]string          // service name -> its checks, as compared
	nodePrnt map[string]string          // node -> its node checks, as compared
	dirty    map[string]bool            // to fetch
	inflight map[string]bool            // being fetched
	subsets  map[string]map[string][]mesh.Endpoint
	// unhealthySubsets holds each subset's endpoints that are not routable
	// (View.UnhealthySubsets), as subsets the routable ones.
	unhealthySubsets map[string]map[string][]mesh.Endpoint
	wake             chan struct{}
	sweep            *time.Timer // pending sweep after an unexplained change, or nil

	lastPublish time.Time
	fetches     uint64 // queries made by the fetchers, for Stats
	sweeps      uint64
}

func newCatalog() catalog {
	return catalog{names: map[string]bool{}, proxyOf: map[string]string{}, onNode: map[string]map[string]bool{},
		nodesOf: map[string][]string{}, prints: map[string]string{}, nodePrnt: map[string]string{},
		dirty: map[string]bool{}, inflight: map[string]bool{}, subsets: map[string]map[string][]mesh.Endpoint{},
		unhealthySubsets: map[string]map[string][]mesh.Endpoint{},
		wake:             make(chan struct{}, 1)}
}

// Stats describes how the Source follows the catalog.
type Stats struct {
	// Services is how many services the local catalog has.
	Services int
	// Fetches counts the plain queries made to refetch services.
	Fetches uint64
	// Sweeps counts refetches of every service after an unexplained
	// catalog change.
	Sweeps uint64
	// Pending is how many services wait to be refetched.
	Pending int
	// Errors counts the failed queries of every watch.
	Errors uint64
	// LastUpdate is when the last view was published.
	LastUpdate time.Time
	// Failing is how many watches are failing now (Stale explains them).
	Failing int
	// Denied is how many of those the agent denies for want of a
	// permission (Degraded names them).
	Denied int
}

// Stats returns how the Source follows the catalog.
func (c *Source) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Services: len(c.cat.names), Fetches: c.cat.fetches, Sweeps: c.cat.sweeps, Pending: len(c.cat.dirty) + len(c.cat.inflight),
		Errors: c.errors, LastUpdate: c.lastUpdate, Failing: len(c.failing), Denied: len(c.deniedLocked())}
}

// markLocked queues name for a fetch. c.mu is held.
func (c *Source) markLocked(name string) {
	c.cat.dirty[name] = true
	select {
	case c.cat.wake <- struct{}{}:
	default:
	}
}

// loadServices reads the typical services of the catalog: new names are
// fetched, removed ones dropped. A change of index with no name or tag
// change schedules a sweep, unless the checks explain it first.
func (c *Source) loadServices(ctx context.Context, index uint64) (uint64, error) {
	q := c.queryOptions(ctx, index)
	q.Filter = `ServiceKind == ""`
	services, meta, err := c.client.Catalog().Services(q)
	if err != nil {
		return index, classify(callServices, err)
	}
	if err := filtered(callServices, meta); err != nil {
		return index, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	explained := false
	for name := range c.cat.names {
		if _, ok := services[name]; !ok {
			c.forgetLocked(name)
			explained = true
		}
	}
	for name := range services {
		if name == "consul" || c.cat.names[name] {
			continue
		}
		c.cat.names[name] = true
		c.cat.proxyOf[name] = ""
		c.markLocked(name)
		explained = true
	}
	switch {
	case index == 0 && c.started:
		// Again after a failure: what changed meanwhile without a name or
		// a check to show it is only found by looking at everything.
		c.scheduleSweepLocked()
	case !explained && index != 0 && meta.LastIndex != index && c.started:
		c.scheduleSweepLocked()
	}
	if explained {
		c.publishLocked()
	}
	return meta.LastIndex, nil
}

func (c *Source) forgetLocked(name string) {
	delete(c.cat.names, name)
	delete(c.state.endpoints, name)
	delete(c.state.unhealthy, name)
	delete(c.cat.subsets, name)
	delete(c.cat.unhealthySubsets, name)
	for _, node := range c.cat.nodesOf[name] {
		delete(c.cat.onNode[node], name)
	}
	delete(c.cat.nodesOf, name)
}

func (c *Source) scheduleSweepLocked() {
	if c.cat.sweep != nil {
		return
	}
	c.cat.sweep = time.AfterFunc(c.opts.SweepDelay, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.cat.sweep == nil {
			return
		}
		c.cat.sweep = nil
		c.cat.sweeps++
		for name := range c.cat.names {
			c.markLocked(name)
		}
	})
}

// loadChecks reads the checks of the datacenter that are not passing and
// marks the services whose such checks changed since the last answer: a
// check going critical or warning appears, one passing again goes, and
// only those change routing. Consul filters them (a filter expression),
// so a change among 10,000 passing checks costs the decoding of the few
// that are not, not of all of them.
func (c *Source) loadChecks(ctx context.Context, index uint64) (uint64, error) {
	q := c.queryOptions(ctx, index)
	q.Filter = `Status != "passing"`
	checks, meta, err := c.client.Health().State(api.HealthAny, q)
	if err != nil {
		return index, classify(callChecks, err)
	}
	if err := filtered(callChecks, meta); err != nil {
		return index, err
	}
	byService := map[string][]string{}
	byNode := map[string][]string{}
	for _, ch := range checks {
		line := ch.Node + "\x00" + ch.CheckID + "\x00" + ch.ServiceID + "\x00" + ch.Status
		if ch.ServiceName == "" {
			byNode[ch.Node] = append(byNode[ch.Node], line)
		} else {
			byService[ch.ServiceName] = append(byService[ch.ServiceName], line)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	compare := func(prints map[string]string, now map[string][]string, mark func(string)) {
		for key, lines := range now {
			sort.Strings(lines)
			p := strings.Join(lines, "\n")
			if prints[key] != p {
				prints[key] = p
				mark(key)
			}
		}
		for key := range prints {
			if _, ok := now[key]; !ok {
				delete(prints, key)
				mark(key)
			}
		}
	}
	first := index == 0 && !c.started
	compare(c.cat.prints, byService, func(name string) {
		changed = true
		if first {
			return // the first load fetches every service anyway
		}
		if dest := c.cat.proxyOf[name]; dest != "" {
			name = dest
		}
		if name != "consul" {
			c.markLocked(name)
		}
	})
	compare(c.cat.nodePrnt, byNode, func(node string) {
		changed = true
		if first {
			return
		}
		for name := range c.cat.onNode[node] {
			c.markLocked(name)
		}
	})
	if changed && c.cat.sweep != nil {
		c.cat.sweep.Stop() // the checks explain the catalog's change
		c.cat.sweep = nil
	}
	return meta.LastIndex, nil
}

// fetchers runs the workers that refetch marked services until ctx ends.
func (c *Source) fetchers(ctx context.Context) {
	for range c.opts.Fetchers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				name, ok := c.nextDirty()
				if !ok {
					select {
					case <-ctx.Done():
						return
					case <-c.cat.wake:
						continue
					}
				}
				err := c.fetch(ctx, name)
				if ctx.Err() != nil {
					return
				}
				c.mu.Lock()
				delete(c.cat.inflight, name)
				if err != nil {
					c.markLocked(name) // retried after the backoff below
				}
				if len(c.cat.dirty)+len(c.cat.inflight) == 0 || time.Since(c.cat.lastPublish) > 200*time.Millisecond {
					c.publishLocked()
				}
				c.mu.Unlock()
				c.setFailing("endpoints", err)
				if err != nil {
					select {
					case <-ctx.Done():
						return
					case <-time.After(c.opts.MaxBackoff / 4):
					}
				}
			}
		}()
	}
}

// nextDirty takes a marked service that is not being fetched.
func (c *Source) nextDirty() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.cat.dirty {
		if c.cat.inflight[name] {
			continue
		}
		delete(c.cat.dirty, name)
		c.cat.inflight[name] = true
		if len(c.cat.dirty) > 0 {
			select { // another worker may take the next
			case c.cat.wake <- struct{}{}:
			default:
			}
		}
		return name, true
	}
	return "", false
}

// fetchAll fetches every marked service now, for New's first view.
func (c *Source) fetchAll(ctx context.Context) error {
	for {
		name, ok := c.nextDirty()
		if !ok {
			return nil
		}
		err := c.fetch(ctx, name)
		c.mu.Lock()
		delete(c.cat.inflight, name)
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// fetch refetches one marked name: a service's mesh endpoints and its
// subsets', or, for a proxy, its destination's.
func (c *Source) fetch(ctx context.Context, name string) error {
	c.mu.Lock()
	dest, classified := c.cat.proxyOf[name]
	typical := c.cat.names[name]
	resolver := c.resolverLocked(name)
	c.mu.Unlock()
	counted := func(n int) {
		c.mu.Lock()
		c.cat.fetches += uint64(n)
		c.mu.Unlock()
	}
	q := (&api.QueryOptions{}).WithContext(ctx)
	switch {
	case dest != "":
		c.mu.Lock()
		c.markLocked(dest)
		c.mu.Unlock()
		return nil
	case !classified && !typical:
		// A check of a service not seen yet: a new proxy's, most likely.
		counted(1)
		nodes, _, err := c.client.Catalog().Service(name, "", q)
		if err != nil {
			return classify(call("reading the catalog entry of "+name, "GET /v1/catalog/service/"+name, readAll...), err)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.cat.proxyOf[name] = ""
		for _, n := range nodes {
			if n.ServiceProxy != nil && n.ServiceProxy.DestinationServiceName != "" {
				c.cat.proxyOf[name] = n.ServiceProxy.DestinationServiceName
				c.markLocked(n.ServiceProxy.DestinationServiceName)
				break
			}
		}
		return nil
	case !typical:
		return nil // gone, or not a service with mesh endpoints
	}
	counted(1)
	entries, meta, err := c.client.Health().Connect(name, "", false, q)
	if err != nil {
		return classify(callConnect(name, ""), err)
	}
	if err := filtered(callConnect(name, ""), meta); err != nil {
		return err
	}
	subsets, badSubsets, err := c.subsetEndpoints(ctx, name, entries, resolver, &api.QueryOptions{}, counted)
	if err != nil {
		return err
	}
	var eps, bad []mesh.Endpoint
	var nodes []string
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.cat.names[name] {
		return nil // removed meanwhile
	}
	for _, e := range entries {
		if e.Service.Kind == api.ServiceKindConnectProxy {
			c.cat.proxyOf[e.Service.Service] = name
		}
		if e.Node != nil {
			nodes = append(nodes, e.Node.Node)
		}
		if ep, ok := endpointOf(e, false); ok {
			eps = append(eps, ep)
		} else {
			bad = append(bad, ep)
		}
	}
	for _, node := range c.cat.nodesOf[name] {
		delete(c.cat.onNode[node], name)
	}
	for _, node := range nodes {
		if c.cat.onNode[node] == nil {
			c.cat.onNode[node] = map[string]bool{}
		}
		c.cat.onNode[node][name] = true
	}
	c.cat.nodesOf[name] = nodes
	if len(eps) == 0 {
		delete(c.state.endpoints, name)
	} else {
		c.state.endpoints[name] = eps
	}
	if len(bad) == 0 {
		delete(c.state.unhealthy, name)
	} else {
		c.state.unhealthy[name] = bad
	}
	if subsets == nil {
		delete(c.cat.subsets, name)
		delete(c.cat.unhealthySubsets, name)
	} else {
		c.cat.subsets[name], c.cat.unhealthySubsets[name] = subsets, badSubsets
	}
	return nil
}

// subsetEndpoints returns the routable endpoints of each subset the
// resolver defines, and those that are not (critical, zero weight, or not
// passing in an OnlyPassing subset), from the service's entries where the
// subset has no Filter and from one more query with the Filter, evaluated
// by Consul, where it has one (q gives the datacenter; counted hears of
// each query). It returns nil maps when the resolver defines no subset.
func (c *Source) subsetEndpoints(ctx context.Context, name string, entries []*api.ServiceEntry, resolver *api.ServiceResolverConfigEntry,
	q *api.QueryOptions, counted func(int)) (routable, unhealthy map[string][]mesh.Endpoint, err error) {
	if resolver == nil || len(resolver.Subsets) == 0 {
		return nil, nil, nil
	}
	routable = make(map[string][]mesh.Endpoint, len(resolver.Subsets))
	unhealthy = map[string][]mesh.Endpoint{}
	for sub, def := range resolver.Subsets {
		se, eps := entries, []mesh.Endpoint(nil)
		if def.Filter != "" {
			counted(1)
			fq := *q
			fq.Filter, fq.WaitIndex, fq.WaitTime = def.Filter, 0, 0
			var err error
			se, _, err = c.client.Health().Connect(name, "", false, (&fq).WithContext(ctx))
			if err != nil {
				return nil, nil, classify(call(fmt.Sprintf("reading subset %q of %s (filter %q)", sub, name, def.Filter), "GET /v1/health/connect/"+name+dcQuery(q.Datacenter), readAll...), err)
			}
		}
		for _, e := range se {
			if ep, ok := endpointOf(e, def.OnlyPassing); ok {
				eps = append(eps, ep)
			} else {
				unhealthy[sub] = append(unhealthy[sub], ep)
			}
		}
		routable[sub] = eps
	}
	return routable, unhealthy, nil
}

// healthAndWeight is Consul's health and weight of an endpoint it hands a
// gateway's or a sidecar's Envoy (calculateEndpointHealthAndWeight in
// Consul's agent/xds): the Passing weight, the Warning weight while a
// check warns; unhealthy with a critical (or maintenance) check, a check
// that is not passing where onlyPassing (an OnlyPassing subset), or a
// weight below 1; a weight above 128 counts as 128.
func healthAndWeight(e *api.ServiceEntry, onlyPassing bool) (healthy bool, weight int) {
	healthy, weight = true, 1
	set := e.Service.Weights.Passing != 0 || e.Service.Weights.Warning != 0
	if set {
		weight = e.Service.Weights.Passing
	}
	for _, ch := range e.Checks {
		if ch.Status == api.HealthCritical || ch.Status == api.HealthMaint {
			healthy = false
		}
		if onlyPassing && ch.Status != api.HealthPassing {
			healthy = false
		}
		if ch.Status == api.HealthWarning && set {
			weight = e.Service.Weights.Warning
		}
	}
	if weight < 1 {
		return false, 1
	}
	return healthy, min(weight, 128)
}

// endpointOf returns where an instance is dialled, in Consul's order
// (CheckServiceNode.BestAddress in Consul's agent/structs): inside the
// datacenter the service address, else the node's; from other datacenters
// the service's "wan" tagged address, the service address, the node's "wan"
// tagged address, the node address. A "wan" tagged port replaces the
// service port. It also reports whether the endpoint is healthy, with its
// weight (healthAndWeight).
func endpointOf(e *api.ServiceEntry, onlyPassing bool) (mesh.Endpoint, bool) {
	var nodeAddr, nodeWAN string
	if e.Node != nil {
		nodeAddr, nodeWAN = e.Node.Address, e.Node.TaggedAddresses["wan"]
	}
	lan := e.Service.Address
	if lan == "" {
		lan = nodeAddr
	}
	wan, wanPort := e.Service.Address, e.Service.Port
	if tagged, ok := e.Service.TaggedAddresses["wan"]; ok {
		wan = tagged.Address
		if tagged.Port != 0 {
			wanPort = tagged.Port
		}
	}
	if wan == "" {
		wan = nodeWAN
	}
	if wan == "" {
		wan = nodeAddr
	}
	ep := mesh.Endpoint{Address: net.JoinHostPort(lan, strconv.Itoa(e.Service.Port))}
	if wan != "" {
		ep.WAN = net.JoinHostPort(wan, strconv.Itoa(wanPort))
	}
	healthy, weight := healthAndWeight(e, onlyPassing)
	if weight > 1 {
		ep.Weight = weight
	}
	return ep, healthy
}
