package gateway

import (
	"context"
	"net"
)

// ConnInfo describes the accepted connection a Router is asked to route. A
// Server puts it in the context it passes to Router.Route; ConnInfoFrom
// reads it back, so a Router can route or refuse by source address.
type ConnInfo struct {
	// ID numbers the Server's connections from 1, in accept order.
	ID uint64
	// Remote is the client's address; Local the listener address it reached.
	Remote, Local net.Addr
}

type connInfoKey struct{}

// ConnInfoFrom returns the connection that ctx was created for by a Server,
// and whether there is one.
func ConnInfoFrom(ctx context.Context) (ConnInfo, bool) {
	ci, ok := ctx.Value(connInfoKey{}).(*ConnInfo)
	if !ok {
		return ConnInfo{}, false
	}
	return *ci, true
}
