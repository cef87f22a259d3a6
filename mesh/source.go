package resolve

import (
	"context"

	"github.com/meshgate/meshgate/mesh"
)

// Source provides the current View of the mesh. Static and the live Consul
// source implement it. A View is immutable once returned, so a caller takes
// one per decision and never sees half an update.
type Source interface {
	View() *View
}

// Follower is a Source that holds other datacenters' services only once
// asked to: consulview.Source follows the local datacenter whole, and each
// service of another datacenter that a plan needs (a failover target, an
// upstream dialled directly) with a blocking query of its own. Follow
// returns once each new key has been read once, or with the error of those
// that could not be (their watches retry on their own); the next View holds
// what was read.
type Follower interface {
	Source
	Follow(ctx context.Context, keys ...ServiceKey) error
}

// The model of the mesh is package mesh's: these names are the same types,
// so that a program planning with resolve need not import mesh.
type (
	// View is mesh.View: one consistent picture of the mesh.
	View = mesh.View
	// Endpoint is mesh.Endpoint: one address to dial.
	Endpoint = mesh.Endpoint
	// Location is mesh.Location: a datacenter and an admin partition.
	Location = mesh.Location
	// ServiceKey is mesh.ServiceKey: a service in a datacenter.
	ServiceKey = mesh.ServiceKey
	// EntryKey is mesh.EntryKey: the config entry of one service.
	EntryKey = mesh.EntryKey
	// Peer is mesh.Peer: a cluster peer.
	Peer = mesh.Peer
	// ImportedService is mesh.ImportedService: a service a peer exports
	// to this cluster.
	ImportedService = mesh.ImportedService
	// Instance is mesh.Instance: a proxy whose upstreams can be planned.
	Instance = mesh.Instance
	// Federation is mesh.Federation: WAN federation through mesh gateways.
	Federation = mesh.Federation
	// Server is mesh.Server: one Consul server of the local datacenter.
	Server = mesh.Server
)

// KeyOf returns the EntryKey of service name in namespace and partition,
// an empty one being "default": mesh.KeyOf.
func KeyOf(name, namespace, partition string) EntryKey { return mesh.KeyOf(name, namespace, partition) }
