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
		return index, classify("reading the local Consul servers", err)
	}
	if err := filtered("reading the local Consul servers", meta); err != nil {
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

// loadPeerings reads the peerings, and starts or stops one watch per
// imported service. It blocks for at most peeringPoll.
func (c *Source) loadPeerings(ctx context.Context, index uint64) (uint64, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: min(peeringPoll, waitFor(ctx))}).WithContext(ctx)
	list, meta, err := c.client.Peerings().List(ctx, q)
	if err != nil {
		return index, classifyPeering("listing peerings", err)
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
		return index, classifyPeering("reading service "+name+" imported from peer "+peer, err)
	}
	if err := filtered("reading service "+name+" imported from peer "+peer, meta); err != nil {
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

// loadExports reads the services this cluster exports and their consumer
// peers, as Consul resolves them (/v1/exported-services).
func (c *Source) loadExports(ctx context.Context, index uint64) (uint64, error) {
	list, meta, err := c.client.ExportedServices(c.queryOptions(ctx, index))
	if err != nil {
		return index, classifyPeering("listing exported services", err)
	}
	if err := filtered("listing exported services", meta); err != nil {
		return index, err
	}
	exports := map[mesh.ServiceKey][]string{}
	for _, e := range list {
		if len(e.Consumers.Peers) == 0 {
			continue
		}
		k := mesh.ServiceKeyOf(e.Service, e.Namespace, e.Partition, "")
		exports[k] = append(exports[k], e.Consumers.Peers...)
	}
	c.mu.Lock()
	c.state.exports = exports
	c.publishLocked()
	c.mu.Unlock()
	return meta.LastIndex, nil
}

// classifyPeering is classify for the peering reads, naming the permissions
// they need beyond a datacenter gateway's.
func classifyPeering(what string, err error) error {
	err = classify(what, err)
	if errors.Is(err, ErrPermissionDenied) {
		return fmt.Errorf("%w (a gateway that serves peering also needs peering:read and mesh:read)", err)
	}
	return err
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
