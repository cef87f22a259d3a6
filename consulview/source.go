package consulview

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
)

// ErrPermissionDenied wraps Consul's 403 answers, with the permission a
// gateway's token needs. It is registration.ErrPermissionDenied too.
var ErrPermissionDenied = agenterr.ErrPermissionDenied

// ErrAgentUnreachable wraps a failed first load from an agent that does not
// answer. It is registration.ErrAgentUnreachable too.
var ErrAgentUnreachable = agenterr.ErrAgentUnreachable

// Options configures a Consul source. Zero values are useful.
type Options struct {
	// Datacenter is the local datacenter. Empty means the one the catalog
	// names for the local Consul servers (GET /v1/health/service/consul,
	// which the token Consul documents for a mesh gateway may read); no
	// agent endpoint is asked either way.
	Datacenter string
	// Partition is the local admin partition (Consul Enterprise). Empty
	// means the one the catalog names for the local servers when
	// Datacenter is empty, else the default partition.
	Partition string
	// Peering says when the Source follows cluster peering (the peerings,
	// which need peering:read, and the services exported to and imported
	// from each peer); the zero value, PeeringAuto, follows it when the
	// mesh uses it or the token may read peerings.
	Peering PeeringMode
	// Authorizer, if set, is asked whether the token may read peerings
	// before the Source tries (PeeringAuto), so that a token without
	// peering:read costs no denied request (each is an error line in the
	// agent's log), and again every DatacenterRefresh, so that a
	// permission granted later is used without a restart. Programs pass
	// TokenAuthorizer of the client's configuration.
	Authorizer Authorizer
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
	// Once makes New load one view and start no watch: for a tool that
	// reads a view and exits (meshgate's explain), which then leaves no
	// blocking query on the agent. Its View never changes; Close is still
	// the caller's.
	Once bool
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
	// Domain is the DNS domain of the servers' names, for WAN federation;
	// empty means the agent's (its "domain" option, from GET
	// /v1/agent/self, asked only with WANFederation, which needs
	// agent:read; without it, "consul", and one warning line).
	Domain string
}

// Source is a mesh.Source kept current from a live Consul agent through blocking
// queries: the local datacenter and trust domain, proxy-defaults,
// service-defaults, service-resolver, service-router, service-splitter and
// mesh entries, every local service's
// healthy mesh endpoints (its sidecar proxies or Connect-native instances)
// and those of its resolver subsets, and the mesh gateways of every
// datacenter (found by kind, whatever their name) with their WAN addresses.
// It holds at most Options.MaxConnections agent connections at once (8 by
// default) however many services, datacenters and peers there are; Consul
// allows 200 per client address by default. Each change is published as a
// new immutable View, so routing never sees half an update and established
// connections are untouched. When the agent fails, the last good
// view stays in force (Stale reports it) and the watches retry with backoff.
type Source struct {
	client *api.Client
	opts   Options
	log    *slog.Logger

	view atomic.Pointer[mesh.View]

	mu         sync.Mutex
	state      consulState
	failing    map[string]error // watch name -> its last error
	errors     uint64           // failed queries, all watches
	lastUpdate time.Time        // when the last view was published
	cat        catalog
	dcs        map[string]context.CancelFunc // datacenter -> its gateway names' watch
	gwNames    map[string]context.CancelFunc // "dc/name" -> that gateway service's watch
	imports    map[string]context.CancelFunc // "peer/service" -> its watch
	exports    map[string]context.CancelFunc // peer -> the watch of what is exported to it
	peering    peeringState
	remote     map[string]context.CancelFunc // remoteKey -> a followed service's watch
	turns      *turns                        // the agent connections the other watches share
	started    bool                          // the first load is done; new keys get watches at once

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ mesh.Source = (*Source)(nil)

// consulState is what the watches have gathered; each publish copies it into
// a new View.
type consulState struct {
	datacenter, partition, trustDomain string
	proxyDefaults                      *api.ProxyConfigEntry
	serviceDefaults                    map[mesh.EntryKey]*api.ServiceConfigEntry
	resolvers                          map[mesh.EntryKey]*api.ServiceResolverConfigEntry
	routers                            map[mesh.EntryKey]*api.ServiceRouterConfigEntry
	splitters                          map[mesh.EntryKey]*api.ServiceSplitterConfigEntry
	mesh                               *api.MeshConfigEntry
	endpoints                          map[string][]mesh.Endpoint // local service -> endpoints
	unhealthy                          map[string][]mesh.Endpoint // local service -> its endpoints that are not routable
	gateways                           map[string]gatewaySet      // "dc/name" -> gateways
	domain                             string                     // the servers' DNS domain
	fedServers                         []mesh.ConsulServer        // every local server, by node, at its RPC address
	fedGateways                        map[string]gatewaySet      // datacenter -> gateways, from the federation states
	remote                             map[string]remoteService   // followed services of other datacenters, by remoteKey
	servers                            []string                   // local servers' gRPC TLS addresses
	peerings                           map[string]*api.Peering
	exportsOf                          map[string][]mesh.ServiceKey    // peer -> what is exported to it, datacenter left empty
	imports                            map[string]mesh.ImportedService // "peer/service" -> import
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
		exports: map[string]context.CancelFunc{},
		remote:  map[string]context.CancelFunc{}, turns: newTurns(opts.MaxConnections - 2 - opts.Fetchers)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.state.serviceDefaults = map[mesh.EntryKey]*api.ServiceConfigEntry{}
	c.state.resolvers = map[mesh.EntryKey]*api.ServiceResolverConfigEntry{}
	c.state.endpoints = map[string][]mesh.Endpoint{}
	c.state.unhealthy = map[string][]mesh.Endpoint{}
	c.state.gateways = map[string]gatewaySet{}
	c.state.fedGateways = map[string]gatewaySet{}
	c.state.remote = map[string]remoteService{}
	c.state.peerings = map[string]*api.Peering{}
	c.state.imports = map[string]mesh.ImportedService{}
	c.state.exportsOf = map[string][]mesh.ServiceKey{}

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
		{"service-routers", c.loadRouters},
		{"service-splitters", c.loadSplitters},
		{"mesh", c.loadMesh},
		{"services", c.loadServices},
		{"health checks", c.loadChecks},
		{"consul servers", c.loadServers},
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
	// Cluster peering, when it is followed (see PeeringMode): the mesh
	// entry is known by now.
	peerings, err := c.firstPeerings(ctx)
	if err != nil {
		c.Close()
		return nil, err
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
		if err := c.firstKeyed(c.gwNames, gatewaysWatch, key, dc, c.loadGateways); err != nil {
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
	for peer := range c.exports {
		if err := c.firstKeyed(c.exports, "exports to ", peer, "", c.loadExportsTo); err != nil {
			c.mu.Unlock()
			c.Close()
			return nil, err
		}
	}
	c.started = true
	c.publishLocked()
	c.mu.Unlock()
	if opts.Once {
		return c, nil
	}
	for i, w := range first {
		// The catalog's and the checks' watches carry every service's
		// changes: a connection each. The others take turns, the
		// peerings' first.
		l := laneShared
		switch w.name {
		case "services", "health checks":
			l = laneOwn
		}
		c.watch(c.ctx, w.name, indexes[i], w.load, l)
	}
	if peerings != nil {
		c.mu.Lock()
		c.startPeeringsLocked(*peerings)
		c.mu.Unlock()
	}
	c.fetchers(c.ctx)
	c.wg.Add(1)
	go c.refreshDatacenters()
	return c, nil
}

// View returns the current view.
func (c *Source) View() *mesh.View { return c.view.Load() }

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

// Degraded returns what the Source does not follow for want of a
// permission: for each watch the agent denies, or answers filtered by ACLs,
// an error naming the endpoint and the rule to add to the token's policy
// (an *agenterr.PermissionError, ErrPermissionDenied), in the order of the
// watches' names. Routing goes on without what they would give: a gateway
// whose token may not read peerings routes everything but peering. Nil
// when nothing is denied.
func (c *Source) Degraded() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deniedLocked()
}

func (c *Source) deniedLocked() []error {
	var names []string
	for name, err := range c.failing {
		if errors.Is(err, ErrPermissionDenied) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := make([]error, len(names))
	for i, name := range names {
		out[i] = c.failing[name]
	}
	return out
}

// Close stops the watches.
func (c *Source) Close() {
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
}

// serverWaits and serverWait bound how long loadIdentity waits for the
// catalog to list a Consul server: a first read, then blocking queries.
const (
	serverWaits = 4
	serverWait  = 5 * time.Second
)

// loadIdentity learns the local datacenter and partition (Options, or
// the catalog's entries of the local Consul servers), the trust domain
// (the Connect CA roots, which need no permission) and, for WAN
// federation, the servers' DNS domain.
func (c *Source) loadIdentity() error {
	dc, part, domain := c.opts.Datacenter, c.opts.Partition, c.opts.Domain
	if dc == "" {
		// A cluster that has just elected its leader lists its servers a
		// moment later (the leader registers them): wait for the entry
		// with a blocking query, a few times, before giving up.
		q := &api.QueryOptions{}
		for try := 0; dc == "" && try < serverWaits; try++ {
			entries, meta, err := c.client.Health().Service("consul", "", false, q)
			if err != nil {
				return classify(callServers, err)
			}
			if err := filtered(callServers, meta); err != nil {
				return err
			}
			for _, e := range entries {
				if e.Node != nil && e.Node.Datacenter != "" {
					dc, part = e.Node.Datacenter, e.Node.Partition
					break
				}
			}
			q = &api.QueryOptions{WaitIndex: max(meta.LastIndex, 1), WaitTime: serverWait}
		}
		if dc == "" {
			return fmt.Errorf("consulview: the catalog lists no Consul server to say which datacenter this is (GET /v1/health/service/consul): set Options.Datacenter (meshgateway -datacenter)")
		}
	}
	if domain == "" && c.opts.WANFederation {
		self, err := c.client.Agent().Self()
		if err != nil {
			err = classify(call("reading the agent's DNS domain", "GET /v1/agent/self", agenterr.ReadAgents), err)
			if !errors.Is(err, ErrPermissionDenied) {
				return err
			}
			c.log.Warn("consulview: the servers' DNS domain is taken to be consul; set Options.Domain (meshgateway -domain) if it is not", "err", err)
		} else {
			domain, _ = self["DebugConfig"]["DNSDomain"].(string)
		}
	}
	roots, _, err := c.client.Connect().CARoots(nil)
	if err != nil {
		return classify(call("reading the Connect CA roots", "GET /v1/connect/ca/roots"), err)
	}
	if roots.TrustDomain == "" {
		return fmt.Errorf("consulview: Consul has no Connect CA yet (is connect enabled?)")
	}
	c.mu.Lock()
	c.state.datacenter, c.state.partition, c.state.trustDomain = strings.ToLower(dc), tenancy.OrDefault(part), roots.TrustDomain
	c.state.domain = normalDomain(domain)
	c.mu.Unlock()
	return nil
}

// publishLocked builds a new View from the state and publishes it. c.mu is
// held.
func (c *Source) publishLocked() {
	c.lastUpdate = time.Now()
	s := &c.state
	v := &mesh.View{
		Datacenter:        s.datacenter,
		Partition:         s.partition,
		TrustDomain:       s.trustDomain,
		ProxyDefaults:     s.proxyDefaults,
		ServiceDefaults:   s.serviceDefaults, // replaced on change, never changed
		Mesh:              s.mesh,
		Resolvers:         s.resolvers, // likewise
		Routers:           s.routers,
		Splitters:         s.splitters,
		Services:          make(map[mesh.ServiceKey][]mesh.Endpoint, len(s.endpoints)),
		Subsets:           make(map[mesh.ServiceKey]map[string][]mesh.Endpoint, len(c.cat.subsets)),
		UnhealthyServices: make(map[mesh.ServiceKey][]mesh.Endpoint, len(s.unhealthy)),
		UnhealthySubsets:  make(map[mesh.ServiceKey]map[string][]mesh.Endpoint, len(c.cat.unhealthySubsets)),
		Gateways:          make(map[mesh.Location][]mesh.Endpoint, len(s.gateways)),
		UnhealthyGateways: map[mesh.Location][]mesh.Endpoint{},
		Peers:             c.peersLocked(),
		Exports:           c.exportsLocked(),
		Servers:           s.servers,
	}
	for name, eps := range s.endpoints {
		v.Services[mesh.ServiceKeyOf(name, "", s.partition, s.datacenter)] = eps
	}
	for name, subsets := range c.cat.subsets {
		v.Subsets[mesh.ServiceKeyOf(name, "", s.partition, s.datacenter)] = subsets
	}
	for name, eps := range s.unhealthy {
		v.UnhealthyServices[mesh.ServiceKeyOf(name, "", s.partition, s.datacenter)] = eps
	}
	for name, subsets := range c.cat.unhealthySubsets {
		if len(subsets) > 0 {
			v.UnhealthySubsets[mesh.ServiceKeyOf(name, "", s.partition, s.datacenter)] = subsets
		}
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
		l := mesh.Location{Datacenter: dc, Partition: tenancy.Default}
		v.Gateways[l] = append(v.Gateways[l], s.gateways[key].eps...)
		if un := s.gateways[key].unhealthy; len(un) > 0 {
			v.UnhealthyGateways[l] = append(v.UnhealthyGateways[l], un...)
		}
		newest[dc] = max(newest[dc], s.gateways[key].index)
	}
	if c.opts.WANFederation {
		v.Federation = &mesh.Federation{Domain: s.domain, Servers: s.fedServers}
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
