package consulview

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sni"
)

// peeringPoll bounds the blocking query on /v1/peerings: its index does not
// move when a peering's state or imported services change, so the list is
// also re-read this often.
const peeringPoll = time.Second

// loadServers reads the local Consul servers: for peering their gRPC TLS
// addresses, every instance of the "consul" service at its address and
// Meta["grpc_tls_port"], read replicas skipped (they never lead, and only
// the leader serves the peering stream); for WAN federation every instance
// by node name at its server RPC port. Health is ignored, as Consul's
// gateway does.
func (c *Source) loadServers(ctx context.Context, index uint64) (uint64, error) {
	entries, meta, err := c.client.Health().Service("consul", "", false, c.queryOptions(ctx, index))
	if err != nil {
		return index, classify(callServers, err)
	}
	if err := filtered(callServers, meta); err != nil {
		return index, err
	}
	var servers []string
	for _, e := range entries {
		port := e.Service.Meta["grpc_tls_port"]
		if e.Service.Meta["read_replica"] == "true" || port == "" || port == "0" {
			continue
		}
		host := e.Service.Address
		if host == "" && e.Node != nil {
			host = e.Node.Address
		}
		servers = append(servers, net.JoinHostPort(host, port))
	}
	sort.Strings(servers)
	c.mu.Lock()
	c.state.servers = servers
	c.state.fedServers = federationServers(entries)
	c.publishLocked()
	c.mu.Unlock()
	return meta.LastIndex, nil
}

// PeeringMode says when a Source follows cluster peering: the peerings
// (GET /v1/peerings, which needs peering:read), and through them the
// services exported to each peer and imported from it.
type PeeringMode string

const (
	// PeeringAuto, the zero value, follows peering when the mesh entry
	// sends peering through mesh gateways, or else when the token may read
	// peerings: asked of Options.Authorizer when one is set, else found by
	// reading them. Where the mesh entry does not use peering, a token
	// that may not read peerings only means that the gateway routes no
	// peered service, said in one Info line; the Source asks again when
	// the mesh entry changes and, with an Authorizer, every
	// DatacenterRefresh. A denial while the mesh entry uses peering, or
	// once peerings were read, is a degradation (Degraded).
	PeeringAuto PeeringMode = ""
	// PeeringOn always follows peering; a denial is a degradation.
	PeeringOn PeeringMode = "on"
	// PeeringOff never reads peerings: no peered route at all.
	PeeringOff PeeringMode = "off"
)

// callPeerings is the peerings' request.
var callPeerings = call("listing peerings", "GET /v1/peerings", agenterr.ReadPeerings)

// peeringState is how the Source follows cluster peering; c.mu guards it.
type peeringState struct {
	on   bool               // the peerings' watch runs
	stop context.CancelFunc // stops it
	seen bool               // peerings were read: a denial since is a degradation
	said bool               // the Info line on peering left alone was logged
}

// meshPeersLocked reports whether the mesh entry sends peering through
// mesh gateways. c.mu is held.
func (c *Source) meshPeersLocked() bool {
	m := c.state.mesh
	return m != nil && m.Peering != nil && m.Peering.PeerThroughMeshGateways
}

// decidePeering says whether the Source is to read peerings now (follow),
// or, when the mesh uses peering or PeeringOn asks for it but
// Options.Authorizer says the token may not, the denial (a degradation,
// with no request made); neither means peering is left alone (see
// PeeringMode).
func (c *Source) decidePeering(ctx context.Context) (follow bool, denied error) {
	if c.opts.Peering == PeeringOff {
		return false, nil
	}
	c.mu.Lock()
	need := c.opts.Peering == PeeringOn || c.meshPeersLocked()
	c.mu.Unlock()
	if c.opts.Authorizer == nil {
		return true, nil // the read will tell
	}
	ok, err := c.opts.Authorizer.Allowed(ctx, "peering", "read", "")
	if err != nil {
		c.log.Debug("consulview: could not ask whether the token may read peerings; reading them", "err", err)
		return true, nil
	}
	if ok {
		return true, nil
	}
	denied = &agenterr.PermissionError{Prefix: "consulview", Call: callPeerings, Need: callPeerings.Rules,
		Consul: "the token lacks peering:read (POST /v1/internal/acl/authorize)"}
	if need {
		return false, denied
	}
	c.mu.Lock()
	c.leavePeeringLocked(denied)
	c.mu.Unlock()
	return false, nil
}

// leavePeeringLocked decides what a denial of the peerings means: true when
// PeeringAuto leaves peering alone (the mesh entry does not use it and no
// peering was read), said once in an Info line; false when it is a
// degradation. c.mu is held.
func (c *Source) leavePeeringLocked(denied error) bool {
	if c.opts.Peering != PeeringAuto || c.meshPeersLocked() || c.peering.seen {
		return false
	}
	if !c.peering.said {
		c.peering.said = true
		c.log.Info("consulview: cluster peering not followed: the token may not read peerings, and the mesh entry does not send peering through mesh gateways; a gateway that routes peered services needs it",
			"err", denied)
	}
	return true
}

// firstPeerings reads the peerings once for New, when they are followed,
// and returns the index to watch from (nil: no watch).
func (c *Source) firstPeerings(ctx context.Context) (*uint64, error) {
	follow, denied := c.decidePeering(ctx)
	if denied != nil {
		c.setFailing("peerings", denied)
	}
	if !follow {
		return nil, nil
	}
	idx, err := c.loadPeerings(c.ctx, 0)
	switch {
	case err == nil:
		return &idx, nil
	case !errors.Is(err, ErrPermissionDenied):
		return nil, fmt.Errorf("consulview: first load of peerings: %w", err)
	}
	c.mu.Lock()
	leave := c.leavePeeringLocked(err)
	c.mu.Unlock()
	if leave {
		return nil, nil
	}
	c.setFailing("peerings", err) // the watch retries
	idx = 0
	return &idx, nil
}

// reconsiderPeering starts the peerings' watch when the Source does not
// follow peering and now should: the mesh entry came to use it, or the
// Authorizer says a permission was granted.
func (c *Source) reconsiderPeering(ctx context.Context) {
	c.mu.Lock()
	on, need := c.peering.on, c.meshPeersLocked()
	c.mu.Unlock()
	// Without an Authorizer only a need is worth a request that may be
	// denied (and that Consul takes seconds to deny).
	if on || c.opts.Peering == PeeringOff || c.opts.Authorizer == nil && !need && c.opts.Peering != PeeringOn {
		return
	}
	follow, denied := c.decidePeering(ctx)
	switch {
	case follow:
		c.mu.Lock()
		c.startPeeringsLocked(0)
		c.mu.Unlock()
	case denied != nil:
		c.setFailing("peerings", denied)
	}
}

// startPeeringsLocked starts the peerings' watch from index. c.mu is held.
func (c *Source) startPeeringsLocked(index uint64) {
	if c.peering.on || c.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	c.peering.on, c.peering.stop = true, cancel
	c.watch(ctx, "peerings", index, c.loadPeerings, laneUrgent)
}

// loadPeerings reads the peerings, and starts or stops one watch per
// imported service and one per peer for what is exported to it. It blocks
// for at most peeringPoll.
func (c *Source) loadPeerings(ctx context.Context, index uint64) (uint64, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: min(peeringPoll, waitFor(ctx))}).WithContext(ctx)
	list, meta, err := c.client.Peerings().List(ctx, q)
	if err != nil {
		err = classify(callPeerings, err)
		if errors.Is(err, ErrPermissionDenied) && c.started {
			c.mu.Lock()
			leave := c.leavePeeringLocked(err)
			if leave && c.peering.on {
				c.peering.stop()
				c.peering.on = false
			}
			c.mu.Unlock()
			if leave {
				return index, nil
			}
		}
		return index, err
	}
	live := map[string]*api.Peering{}
	imports := map[string]bool{}
	for _, p := range list {
		if p.DeletedAt != nil || p.State == api.PeeringStateDeleting || p.State == api.PeeringStateTerminated {
			continue
		}
		live[p.Name] = p
		for _, svc := range p.StreamStatus.ImportedServices {
			imports[importKey(p.Name, svc)] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peering.seen = true
	c.state.peerings = live
	for key, stop := range c.imports {
		if !imports[key] {
			stop()
			delete(c.imports, key)
			delete(c.state.imports, key)
			delete(c.failing, "imports of "+key)
		}
	}
	for key := range imports {
		c.ensureKeyedLocked(c.imports, "imports of ", key, c.loadImport)
	}
	for peer, stop := range c.exports {
		if live[peer] == nil {
			stop()
			delete(c.exports, peer)
			delete(c.state.exportsOf, peer)
			delete(c.failing, "exports to "+peer)
		}
	}
	for peer := range live {
		c.ensureKeyedLocked(c.exports, "exports to ", peer, c.loadExportsTo)
	}
	c.publishLocked()
	return meta.LastIndex, nil
}

// importKey names the watch of one imported service: "peer/service", the
// service being as Consul lists it in the peering's stream status.
func importKey(peer, service string) string { return peer + "/" + service }

// importedEntry is what /v1/health/connect/<svc>?peer=<peer> answers, with
// the peer metadata the typed client drops.
type importedEntry struct {
	Node *struct {
		Address string
	}
	Service struct {
		Address         string
		Port            int
		TaggedAddresses map[string]api.ServiceAddress
		Connect         struct {
			PeerMeta *struct {
				SNI      []string
				SpiffeID []string
				Protocol string
			}
		}
	}
	Checks api.HealthChecks
}

// loadImport reads one imported service: the synthetic entries Consul keeps
// for it, whose addresses are the exporting peer's mesh gateways, and the SNI
// the peer expects, from their peer metadata. Critical entries' addresses
// are kept apart (ImportedService.UnhealthyGateways), as Consul hands them
// to Envoy marked unhealthy.
func (c *Source) loadImport(ctx context.Context, key string, index uint64) (uint64, error) {
	peer, service, _ := strings.Cut(key, "/")
	namespace, name, ok := strings.Cut(service, "/")
	if !ok {
		namespace, name = "", service
	}
	q := (&api.QueryOptions{Peer: peer, Namespace: namespace, WaitIndex: index, WaitTime: waitFor(ctx)}).WithContext(ctx)
	var entries []importedEntry
	meta, err := c.client.Raw().Query("/v1/health/connect/"+url.PathEscape(name), &entries, q)
	if err != nil {
		return index, classify(callImport(name, peer), err)
	}
	if err := filtered(callImport(name, peer), meta); err != nil {
		return index, err
	}
	k := mesh.ServiceKeyOf(name, namespace, c.state.partition, "")
	im := mesh.ImportedService{Name: name, Namespace: k.Namespace, Partition: k.Partition}
	for _, e := range entries {
		if pm := e.Service.Connect.PeerMeta; pm != nil && len(pm.SNI) > 0 && im.SNI == "" {
			im.SNI = pm.SNI[0]
			im.SpiffeIDs = pm.SpiffeID
		}
		// The WAN address: Envoy under Consul dials imports by WAN. Never
		// wan_ipv4, which the agent fills with the LAN address.
		var addr string
		if wan, ok := e.Service.TaggedAddresses["wan"]; ok && wan.Address != "" && wan.Port != 0 {
			addr = net.JoinHostPort(wan.Address, fmt.Sprint(wan.Port))
		} else if e.Service.Address != "" && e.Service.Port != 0 {
			addr = net.JoinHostPort(e.Service.Address, fmt.Sprint(e.Service.Port))
		}
		switch {
		case addr == "":
		case e.Checks.AggregatedStatus() == api.HealthCritical:
			im.UnhealthyGateways = append(im.UnhealthyGateways, addr)
		default:
			im.Gateways = append(im.Gateways, addr)
		}
	}
	c.mu.Lock()
	if _, live := c.imports[key]; live && ctx.Err() == nil {
		c.state.imports[key] = im
		c.publishLocked()
	}
	c.mu.Unlock()
	return meta.LastIndex, nil
}

// callImport is the request of service name imported from peer: any
// token with service:write on some name may read imports, and one with
// service:read on every service (acl/policy_authorizer.go).
func callImport(name, peer string) agenterr.Call {
	return call("reading service "+name+" imported from peer "+peer, "GET /v1/health/connect/"+name+"?peer="+peer, agenterr.ReadServices)
}

// exportsPath lists the services a cluster exports to one peer, as
// Consul's peering stream replicates them (Internal.ExportedServicesForPeer,
// what Consul's UI shows): it needs service:read on them, where
// /v1/exported-services needs mesh:read. Consul's own gateway reads the
// same list (Internal.ExportedPeeredServices) with service:read.
const exportsPath = "/v1/internal/ui/exported-services"

// loadExportsTo reads the services exported to one peer.
func (c *Source) loadExportsTo(ctx context.Context, peer string, index uint64) (uint64, error) {
	q := c.queryOptions(ctx, index)
	q.Peer = peer
	what := call("listing the services exported to peer "+peer, "GET "+exportsPath+"?peer="+peer, agenterr.ReadServices)
	var list []struct{ Name, Namespace, Partition string }
	meta, err := c.client.Raw().Query(exportsPath, &list, q)
	if err != nil {
		return index, classify(what, err)
	}
	if err := filtered(what, meta); err != nil {
		return index, err
	}
	keys := make([]mesh.ServiceKey, 0, len(list))
	for _, e := range list {
		keys = append(keys, mesh.ServiceKeyOf(e.Name, e.Namespace, e.Partition, ""))
	}
	c.mu.Lock()
	if _, live := c.exports[peer]; live && ctx.Err() == nil {
		c.state.exportsOf[peer] = keys
		c.publishLocked()
	}
	c.mu.Unlock()
	return meta.LastIndex, nil
}

// exportsLocked returns the view's exports: each exported service of the
// local datacenter with the peers it is exported to, in order. c.mu is
// held.
func (c *Source) exportsLocked() map[mesh.ServiceKey][]string {
	out := map[mesh.ServiceKey][]string{}
	for peer, keys := range c.state.exportsOf {
		for _, k := range keys {
			k.Datacenter = c.state.datacenter
			out[k] = append(out[k], peer)
		}
	}
	for _, peers := range out {
		sort.Strings(peers)
	}
	return out
}

// peersLocked builds the view's peers from the peerings and their imports.
// c.mu is held.
func (c *Source) peersLocked() map[string]mesh.Peer {
	s := &c.state
	peers := make(map[string]mesh.Peer, len(s.peerings))
	for name, p := range s.peerings {
		peer := mesh.Peer{Name: name, TrustDomain: peerTrustDomain(p), Roots: p.PeerCAPems}
		// Consul's ShouldDial: the side that established the peering knows
		// the peer's server addresses; the accepting side has none.
		if len(p.PeerServerAddresses) > 0 && p.PeerServerName != "" {
			peer.ServerName = p.PeerServerName
			peer.ServerAddresses = p.PeerServerAddresses
		}
		peers[name] = peer
	}
	keys := make([]string, 0, len(s.imports))
	for k := range s.imports {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		im := s.imports[k]
		name, _, _ := strings.Cut(k, "/")
		peer, ok := peers[name]
		if !ok || im.SNI == "" {
			continue
		}
		peer.Imports = append(peer.Imports, im)
		if len(peer.Gateways) == 0 {
			peer.Gateways = im.Gateways
		}
		if n, err := sni.ParseName(im.SNI, peer.TrustDomain); err == nil && peer.NameAtPeer == "" {
			peer.NameAtPeer = n.Peer
		}
		peers[name] = peer
	}
	return peers
}

// peerTrustDomain returns the peer's trust domain: from its server name on
// the dialing side, else from the URI SAN of its CA roots.
func peerTrustDomain(p *api.Peering) string {
	if _, td, ok := strings.Cut(p.PeerServerName, ".peering."); ok {
		return td
	}
	for _, pemText := range p.PeerCAPems {
		rest := []byte(pemText)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				continue
			}
			for _, u := range cert.URIs {
				if u.Scheme == "spiffe" && u.Host != "" {
					return u.Host
				}
			}
		}
	}
	return ""
}
