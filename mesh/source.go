package mesh

import "context"

// Source provides the current View of the mesh. config.Static and the live
// agent's consulview.Source implement it. A View is immutable once
// returned, so a caller takes one per decision and never sees half an
// update.
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
