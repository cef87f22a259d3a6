package consulview

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/modes"
	"github.com/meshgate/meshgate/resolve"
)

// ErrPermissionDenied wraps Consul's 403 answers, with the permission a
// gateway's token needs.
var ErrPermissionDenied = errors.New("consulview: Consul denied the request")

// ErrAgentUnreachable wraps a failed first load from an agent that does not
// answer.
var ErrAgentUnreachable = errors.New("consulview: Consul agent unreachable")

// Options configures a Consul source. Zero values are useful.
type Options struct {
	// Datacenter is the local datacenter. Empty means: ask the agent
	// (/v1/agent/self, which needs agent:read on the agent's node).
	Datacenter string
	// Logger receives a line when a watch fails (the view goes stale) and
	// when it recovers; nil discards. Tokens are never logged.
	Logger *slog.Logger
	// MaxConnections bounds the agent connections the Source holds at once
	// (on plain HTTP, one per query in flight); zero means 8, and fewer
	// than 4 means 4. The catalog's and the checks' blocking queries have
	// one each, the Fetchers one each, and the other watches (config
	// entries, servers, peerings, exports, each datacenter's gateways,
	// imports, services followed in other datacenters) share the rest:
	// while they are no more than the connections left, each blocks for 5
	// minutes as usual; when there are more, they take turns of 1 s each
	// (the peerings' first), so a change they watch is seen after their
	// turn comes (a few seconds) instead of at once. Over HTTPS the agent speaks HTTP/2, and every
	// query shares one connection: set it high there to keep every watch
	// blocking.
	MaxConnections int
	// Fetchers is how many services are refetched at once after a change
	// (each a plain query); zero means 2.
	Fetchers int
	// SweepDelay is how long a catalog change that no name or check
	// explains waits before every service is refetched; zero means 2 s.
	SweepDelay time.Duration
	// WaitForAgent makes New keep retrying the first load until ctx
	// ends, instead of failing at once when the agent does not answer.
	WaitForAgent bool
	// OnStale, if set, is called with the error each time a watch fails and
	// the view stops being current, and with nil when every watch is current
	// again.
	OnStale func(err error)
	// DatacenterRefresh is how often the list of datacenters is re-read;
	// zero means 30 s.
	DatacenterRefresh time.Duration
	// MaxBackoff bounds the wait between retries of a failing watch; zero
	// means 10 s. The first retry waits 100 ms.
	MaxBackoff time.Duration
	// WANFederation makes the gateway take part in WAN federation through
	// mesh gateways, as one registered with the consul-wan-federation meta
	// does: the view gets a Federation (the local servers by node name,
	// with their RPC addresses), and the federation states
	// (/v1/internal/federation-states/mesh-gateways) add every
	// datacenter's gateways, even before the WAN gossip pool has formed,
	// where they are newer than the catalog's (Consul's
	// ConfigSnapshot.GetMeshGatewayEndpoints).
	WANFederation bool
	// Domain is the DNS domain of the servers' names; empty means the
	// agent's (its "domain" option, from /v1/agent/self), or "consul".
	Domain string
}

// Source is a resolve.Source kept current from a live Consul agent through blocking
// queries: the local datacenter and trust domain, proxy-defaults,
// service-defaults, service-resolver and mesh entries, every local service's
// healthy mesh endpoints (its sidecar proxies or Connect-native instances)
// and those of its resolver subsets, and the mesh gateways of every
// datacenter (found by kind, whatever their name) with their WAN addresses.
// It holds a fixed number of agent connections however many services there
// are: about a dozen, plus, per datacenter, one for its gateways' names and
// one per gateway service, and one per imported service (Consul allows 200
// per client address by default). Each change is
// published as a new immutable View, so routing never sees half an update and
// established connections are untouched. When the agent fails, the last good
// view stays in force (Stale reports it) and the watches retry with backoff.
type Source struct {
	client *api.Client
	opts   Options
	log    *slog.Logger

	view atomic.Pointer[resolve.View]

	mu         sync.Mutex
	state      consulState
	failing    map[string]error // watch name -> its last error
	errors     uint64           // failed queries, all watches
	lastUpdate time.Time        // when the last view was published
	cat        catalog
	dcs        map[string]context.CancelFunc // datacenter -> its gateway names' watch
	gwNames    map[string]context.CancelFunc // "dc/name" -> that gateway service's watch
	imports    map[string]context.CancelFunc // "peer/service" -> its watch
	remote     map[string]context.CancelFunc // remoteKey -> a followed service's watch
	turns      *turns                        // the agent connections the other watches share
	started    bool                          // the first load is done; new keys get watches at once

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ resolve.Source = (*Source)(nil)

// consulState is what the watches have gathered; each publish copies it into
// a new View.
type consulState struct {
	datacenter, partition, trustDomain string
	proxyDefaults                      *api.ProxyConfigEntry
	serviceDefaults                    map[string]*api.ServiceConfigEntry
	resolvers                          map[string]*api.ServiceResolverConfigEntry
	mesh                               *api.MeshConfigEntry
	endpoints                          map[string][]resolve.Endpoint // local service -> endpoints
	gateways                           map[string]gatewaySet         // "dc/name" -> gateways
	domain                             string                        // the servers' DNS domain
	fedServers                         []resolve.Server              // every local server, by node, at its RPC address
	fedGateways                        map[string]gatewaySet         // datacenter -> gateways, from the federation states
	remote                             map[string]remoteService      // followed services of other datacenters, by remoteKey
	servers                            []string                      // local servers' gRPC TLS addresses
	peerings                           map[string]*api.Peering
	exports                            map[resolve.ServiceKey][]string    // datacenter left empty
	imports                            map[string]resolve.ImportedService // "peer/service" -> import
}

// AgentConnections is the connection budget to give Options.MaxConnections
// for a client of cfg when the program itself holds own more long polls on
// the same client: 8 in all on plain HTTP; over HTTPS, where the agent
// speaks HTTP/2 and every query shares one connection, enough for every
// watch to keep its blocking query.
func AgentConnections(cfg *api.Config, own int) int {
	if cfg != nil && cfg.Scheme == "https" {
		return 1 << 10
	}
	return max(8-own, 4)
}

// New loads the first view from the agent client talks to (configured
// the standard way with api.DefaultConfig: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN
// and the TLS variables) and starts the watches that keep it current. It
// fails if the first load fails (unless opts.WaitForAgent), with an error
// wrapping ErrAgentUnreachable or ErrPermissionDenied.
func New(ctx context.Context, client *api.Client, opts Options) (*Source, error) {
	if opts.MaxConnections == 0 {
		opts.MaxConnections = 8
	}
	opts.MaxConnections = max(opts.MaxConnections, 4)
	if opts.Fetchers <= 0 {
		opts.Fetchers = 2
	}
	opts.Fetchers = min(opts.Fetchers, opts.MaxConnections-3)
	if opts.SweepDelay <= 0 {
		opts.SweepDelay = 2 * time.Second
	}
	if opts.DatacenterRefresh <= 0 {
		opts.DatacenterRefresh = 30 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	c := &Source{client: client, opts: opts, log: opts.Logger, failing: map[string]error{},
		cat: newCatalog(), dcs: map[string]context.CancelFunc{}, gwNames: map[string]context.CancelFunc{}, imports: map[string]context.CancelFunc{},
		remote: map[string]context.CancelFunc{}, turns: newTurns(opts.MaxConnections - 2 - opts.Fetchers)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.state.serviceDefaults = map[string]*api.ServiceConfigEntry{}
	c.state.resolvers = map[string]*api.ServiceResolverConfigEntry{}
	c.state.endpoints = map[string][]resolve.Endpoint{}
	c.state.gateways = map[string]gatewaySet{}
	c.state.fedGateways = map[string]gatewaySet{}
	c.state.remote = map[string]remoteService{}
	c.state.peerings = map[string]*api.Peering{}
	c.state.imports = map[string]resolve.ImportedService{}

	wait := 100 * time.Millisecond
	for {
		err := c.loadIdentity()
		if err == nil {
			break
		}
		if !opts.WaitForAgent || errors.Is(err, ErrPermissionDenied) {
			return nil, err
		}
		c.log.Warn("consulview: waiting for the Consul agent", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, opts.MaxBackoff)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	// First, every piece once, synchronously, so the first view is whole.
	first := []struct {
		name string
		load func(context.Context, uint64) (uint64, error)
	}{
		{"proxy-defaults", c.loadProxyDefaults},
		{"service-defaults", c.loadServiceDefaults},
		{"service-resolvers", c.loadResolvers},
		{"mesh", c.loadMesh},
		{"services", c.loadServices},
		{"health checks", c.loadChecks},
		{"consul servers", c.loadServers},
		{"peerings", c.loadPeerings},
		{"exported services", c.loadExports},
	}
	if opts.WANFederation {
		first = append(first, struct {
			name string
			load func(context.Context, uint64) (uint64, error)
		}{"federation states", c.loadFederationStates})
	}
	indexes := make([]uint64, len(first))
	for i, w := range first {
		idx, err := w.load(c.ctx, 0)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("consulview: first load of %s: %w", w.name, err)
		}
		indexes[i] = idx
	}
	// The datacenters have no watch: refreshDatacenters re-reads them.
	if err := c.loadDatacenters(); err != nil {
		c.Close()
		return nil, fmt.Errorf("consulview: first load of datacenters: %w", err)
	}
	if err := c.fetchAll(c.ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("consulview: first load: %w", err)
	}
	c.mu.Lock()
	for dc := range c.dcs {
		if err := c.firstKeyed(c.dcs, "gateway names of ", dc, dc, c.loadGatewayNames); err != nil {
			c.mu.Unlock()
			c.Close()
			return nil, err
		}
	}
	for key := range c.gwNames {
		dc, _, _ := strings.Cut(key, "/")
		if err := c.firstKeyed(c.gwNames, "gateways ", key, dc, c.loadGateways); err != nil {
			c.mu.Unlock()
			c.Close()
			return nil, err
		}
	}
	for key := range c.imports {
		if err := c.firstKeyed(c.imports, "imports of ", key, "", c.loadImport); err != nil {
			c.mu.Unlock()
			c.Close()
			return nil, err
		}
	}
	c.started = true
	c.publishLocked()
	c.mu.Unlock()
	for i, w := range first {
		// The catalog's and the checks' watches carry every service's
		// changes: a connection each. The others take turns, the
		// peerings' first.
		l := laneShared
		switch w.name {
		case "services", "health checks":
			l = laneOwn
		case "peerings":
			l = laneUrgent
		}
		c.watch(c.ctx, w.name, indexes[i], w.load, l)
	}
	c.fetchers(c.ctx)
	c.wg.Add(1)
	go c.refreshDatacenters()
	return c, nil
}

// View returns the current view.
func (c *Source) View() *resolve.View { return c.view.Load() }

// Stale returns nil while every watch is current, or an error naming the
// failing watches while the view is kept from before the failure.
func (c *Source) Stale() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.staleLocked()
}

func (c *Source) staleLocked() error {
	var errs []error
	for name, err := range c.failing {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	return problems.Join(errs...)
}

// Close stops the watches.
func (c *Source) Close() {
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
}

func (c *Source) loadIdentity() error {
	dc, part, domain := c.opts.Datacenter, "", c.opts.Domain
	if dc == "" {
		self, err := c.client.Agent().Self()
		if err != nil {
			return classify("reading /v1/agent/self (needs agent:read, or set Options.Datacenter)", err)
		}
		cfg := self["Config"]
		dc, _ = cfg["Datacenter"].(string)
		part, _ = cfg["Partition"].(string)
		if c.opts.Domain == "" {
			domain, _ = self["DebugConfig"]["DNSDomain"].(string)
		}
		if dc == "" {
			return fmt.Errorf("consulview: /v1/agent/self names no datacenter")
		}
	}
	roots, _, err := c.client.Connect().CARoots(nil)
	if err != nil {
		return classify("reading the Connect CA roots", err)
	}
	if roots.TrustDomain == "" {
		return fmt.Errorf("consulview: Consul has no Connect CA yet (is connect enabled?)")
	}
	c.mu.Lock()
	c.state.datacenter, c.state.partition, c.state.trustDomain = dc, tenancy.OrDefault(part), roots.TrustDomain
	c.state.domain = normalDomain(domain)
	c.mu.Unlock()
	return nil
}

// classify wraps err as ErrPermissionDenied (naming what a gateway's token
// needs) or ErrAgentUnreachable where it is one of those.
func classify(what string, err error) error {
	var se api.StatusError
	msg := err.Error()
	// Consul's answer reads "Unexpected response code: 403 (Permission
	// denied ...)"; a bare "403" could be part of an address.
	if errors.As(err, &se) && se.Code == 403 || strings.Contains(msg, "response code: 403") || strings.Contains(msg, "Permission denied") {
		return fmt.Errorf("%w while %s: a mesh gateway's token needs service:read on all services and node:read (and service:write on its own name to register itself): %v", ErrPermissionDenied, what, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) || strings.Contains(msg, "connection refused") {
		return fmt.Errorf("%w while %s: %v", ErrAgentUnreachable, what, err)
	}
	return fmt.Errorf("consulview: %s: %w", what, err)
}

// filtered turns an answer that Consul filtered by ACLs into an error: a
// gateway that silently saw only part of the mesh would route wrongly.
func filtered(what string, meta *api.QueryMeta) error {
	if meta != nil && meta.ResultsFilteredByACLs {
		return fmt.Errorf("%w while %s: results were filtered by ACLs; a mesh gateway's token needs service:read on all services and node:read", ErrPermissionDenied, what)
	}
	return nil
}

// queryOptions is a blocking query from index, made with ctx, for as long
// as ctx's turn allows (see waitFor).
func (c *Source) queryOptions(ctx context.Context, index uint64) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: waitFor(ctx)}).WithContext(ctx)
}

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

// keyedLoad is a watch of one member of a family: a service's endpoints, a
// datacenter's gateways.
type keyedLoad func(ctx context.Context, key string, index uint64) (uint64, error)

// startKeyed starts the watch of key, recording its cancel func in set.
// c.mu is held.
func (c *Source) startKeyed(set map[string]context.CancelFunc, what, key string, index uint64, load keyedLoad) {
	ctx, cancel := context.WithCancel(c.ctx)
	set[key] = cancel
	c.watch(ctx, what+key, index, func(qctx context.Context, idx uint64) (uint64, error) { return load(qctx, key, idx) }, laneShared)
}

// ensureKeyedLocked makes sure key has a watch: before the first load is
// done, a placeholder that New replaces (it loads key, then starts the
// watch); after, the watch itself. c.mu is held.
func (c *Source) ensureKeyedLocked(set map[string]context.CancelFunc, what, key string, load keyedLoad) {
	if _, ok := set[key]; ok {
		return
	}
	if !c.started {
		set[key] = func() {}
		return
	}
	c.startKeyed(set, what, key, 0, load)
}

// firstKeyed loads key once during New, then starts its watch. c.mu
// is held, and released during the load.
//
// Another datacenter that does not answer does not stop the start: its
// watch is started failing and retries with backoff, and the view goes
// without what it would have given (its gateways; for WAN federation the
// federation states, which the local servers hold, still name them). A
// gateway that is the only way to that datacenter must be able to start
// while the datacenter cannot be reached through it.
//
// dc is the datacenter the load asks, "" for the local agent's own data.
func (c *Source) firstKeyed(set map[string]context.CancelFunc, what, key, dc string, load keyedLoad) error {
	c.mu.Unlock()
	idx, err := load(c.ctx, key, 0)
	c.mu.Lock()
	if err != nil {
		if dc == "" || dc == c.state.datacenter {
			return err
		}
		c.log.Warn("consulview: another datacenter does not answer; starting without what it would give, and retrying", "datacenter", dc, "err", err)
		c.failing[what+key] = err
		c.errors++
		idx = 0
	}
	c.startKeyed(set, what, key, idx, load)
	return nil
}

func (c *Source) loadDatacenters() error {
	dcs, err := c.client.Catalog().Datacenters()
	if err != nil {
		return classify("listing datacenters", err)
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
		return index, classify("listing the mesh gateways of "+dc, err)
	}
	if err := filtered("listing the mesh gateways of "+dc, meta); err != nil {
		return index, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, live := c.dcs[dc]; !live || ctx.Err() != nil {
		return meta.LastIndex, nil
	}
	c.dropGatewaysLocked(dc, names)
	for name := range names {
		c.ensureKeyedLocked(c.gwNames, "gateways ", dc+"/"+name, c.loadGateways)
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
			delete(c.failing, "gateways "+key)
		}
	}
}

// loadGateways reads the routable instances of one mesh gateway service of
// a datacenter (key "dc/name").
func (c *Source) loadGateways(ctx context.Context, key string, index uint64) (uint64, error) {
	dc, name, _ := strings.Cut(key, "/")
	q := (&api.QueryOptions{Datacenter: dc, WaitIndex: index, WaitTime: waitFor(ctx)}).WithContext(ctx)
	entries, meta, err := c.client.Health().Service(name, "", false, q)
	if err != nil {
		return index, classify("reading the mesh gateways of "+dc, err)
	}
	if err := filtered("reading the mesh gateways of "+dc, meta); err != nil {
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

// lane says which agent connection a watch's queries use.
type lane int

const (
	laneOwn    lane = iota // one of its own
	laneShared             // the shared ones, in turn
	laneUrgent             // the shared ones, before the others
)

// watch runs load as a blocking query loop until ctx ends, retrying failures
// with backoff and keeping the last good view meanwhile.
func (c *Source) watch(ctx context.Context, name string, index uint64, load func(context.Context, uint64) (uint64, error), l lane) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if l != laneOwn {
			defer c.turns.join()()
		}
		wait := 100 * time.Millisecond
		for ctx.Err() == nil {
			qctx, done := ctx, func() bool { return false }
			if l != laneOwn {
				var ok bool
				if qctx, done, ok = c.turns.take(ctx, l == laneUrgent); !ok {
					return
				}
			}
			next, err := load(qctx, index)
			preempted := done()
			if ctx.Err() != nil {
				return
			}
			if preempted {
				continue // cut short for a crowd: again, from the same index
			}
			if err != nil {
				c.setFailing(name, err)
				// Retry without blocking: the first answer after an outage
				// refreshes what changed and shows the watch is current.
				index = 0
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				wait = min(2*wait, c.opts.MaxBackoff)
				continue
			}
			c.setFailing(name, nil)
			wait = 100 * time.Millisecond
			if next < index {
				next = 0 // the index went backwards (a restored agent): start over
			}
			index = next
		}
	}()
}

func (c *Source) setFailing(name string, err error) {
	c.mu.Lock()
	_, was := c.failing[name]
	before := len(c.failing)
	if err != nil {
		c.failing[name] = err
		c.errors++
	} else {
		delete(c.failing, name)
	}
	after := len(c.failing)
	c.mu.Unlock()
	switch {
	case err != nil && !was:
		c.log.Warn("consulview: Consul watch failing; routing on the last good view", "watch", name, "err", err.Error())
		if c.opts.OnStale != nil {
			c.opts.OnStale(err)
		}
	case err == nil && was && after == 0 && before > 0:
		c.log.Info("consulview: Consul watches current again")
		if c.opts.OnStale != nil {
			c.opts.OnStale(nil)
		}
	}
}

// publishLocked builds a new View from the state and publishes it. c.mu is
// held.
func (c *Source) publishLocked() {
	c.lastUpdate = time.Now()
	s := &c.state
	v := &resolve.View{
		Datacenter:      s.datacenter,
		Partition:       s.partition,
		TrustDomain:     s.trustDomain,
		ProxyDefaults:   s.proxyDefaults,
		ServiceDefaults: make(map[string]*api.ServiceConfigEntry, len(s.serviceDefaults)),
		Mesh:            s.mesh,
		Resolvers:       s.resolvers,
		Services:        make(map[resolve.ServiceKey][]resolve.Endpoint, len(s.endpoints)),
		Subsets:         make(map[resolve.ServiceKey]map[string][]resolve.Endpoint, len(c.cat.subsets)),
		Gateways:        make(map[resolve.Location][]resolve.Endpoint, len(s.gateways)),
		Peers:           c.peersLocked(),
		Exports:         make(map[resolve.ServiceKey][]string, len(s.exports)),
		Servers:         s.servers,
	}
	for k, peers := range s.exports {
		k.Datacenter = s.datacenter
		v.Exports[k] = peers
	}
	for k, e := range s.serviceDefaults {
		v.ServiceDefaults[k] = e
	}
	for name, eps := range s.endpoints {
		v.Services[resolve.ServiceKey{Name: name, Namespace: tenancy.Default, Partition: tenancy.OrDefault(s.partition), Datacenter: s.datacenter}] = eps
	}
	for name, subsets := range c.cat.subsets {
		v.Subsets[resolve.ServiceKey{Name: name, Namespace: tenancy.Default, Partition: tenancy.OrDefault(s.partition), Datacenter: s.datacenter}] = subsets
	}
	for _, rs := range s.remote {
		if len(rs.eps) > 0 {
			v.Services[rs.key] = rs.eps
		}
		if rs.subsets != nil {
			v.Subsets[rs.key] = rs.subsets
		}
	}
	c.cat.lastPublish = time.Now()
	keys := make([]string, 0, len(s.gateways))
	for key := range s.gateways {
		keys = append(keys, key)
	}
	sort.Strings(keys)            // a stable order of gateway services within a datacenter
	newest := map[string]uint64{} // datacenter -> the catalog's newest gateway
	for _, key := range keys {
		dc, _, _ := strings.Cut(key, "/")
		l := resolve.Location{Datacenter: dc, Partition: tenancy.Default}
		v.Gateways[l] = append(v.Gateways[l], s.gateways[key].eps...)
		newest[dc] = max(newest[dc], s.gateways[key].index)
	}
	if c.opts.WANFederation {
		v.Federation = &resolve.Federation{Domain: s.domain, Servers: s.fedServers}
		c.mergeFederationStatesLocked(v, newest)
	}
	for l, eps := range v.Gateways {
		if len(eps) == 0 {
			delete(v.Gateways, l)
		}
	}
	if old := c.view.Load(); old != nil {
		v.Instances = old.Instances
	}
	c.view.Store(v)
}

// AgentInstances returns the proxies registered with the agent client talks
// to (connect-proxy services with their upstreams), for planning.
func AgentInstances(client *api.Client) ([]resolve.Instance, error) {
	services, err := client.Agent().Services()
	if err != nil {
		return nil, classify("listing the agent's services", err)
	}
	var out []resolve.Instance
	for _, s := range services {
		if s.Kind != api.ServiceKindConnectProxy || s.Proxy == nil {
			continue
		}
		out = append(out, resolve.Instance{Service: s.Proxy.DestinationServiceName, Name: s.Service,
			Namespace: s.Namespace, Partition: s.Partition, Proxy: s.Proxy, Origin: "consul agent service " + s.ID})
	}
	return out, nil
}

// UnmergeCentralConfig undoes, as far as it can be known, Consul's merging
// of central config into a proxy registration. The agent returns proxies with
// proxy-defaults and service-defaults already copied into the instance's and
// each upstream's mesh_gateway, which hides the layer that decided. A value
// equal to what the lower layers alone give is taken to come from them and
// cleared, so planning reports their layer as the source. The mode, and so
// the plan, is the same either way; only a value written explicitly and equal
// to the central one is attributed to the central layer.
func UnmergeCentralConfig(v *resolve.View, inst resolve.Instance) resolve.Instance {
	if inst.Proxy == nil {
		return inst
	}
	proxy := *inst.Proxy
	sd, pd := v.ServiceDefaults[inst.Service], v.ProxyDefaults
	central := modes.Decide(modes.ForUpstream(api.Upstream{}, nil, sd, pd))
	if central.Mode != "" && proxy.MeshGateway.Mode == central.Mode {
		proxy.MeshGateway.Mode = ""
	}
	proxy.Upstreams = append([]api.Upstream(nil), proxy.Upstreams...)
	for i, up := range proxy.Upstreams {
		below := up
		below.MeshGateway.Mode = ""
		d := modes.Decide(modes.ForUpstream(below, &proxy, sd, pd))
		if d.Mode != "" && up.MeshGateway.Mode == d.Mode {
			proxy.Upstreams[i].MeshGateway.Mode = ""
		}
	}
	inst.Proxy = &proxy
	return inst
}
