package gateway

import (
	"context"
	"net"
	"time"
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

// story is what a ConnObserver and an UpstreamObserver are told of a
// connection; to and up are nil when nobody listens.
type story struct {
	to                        ConnObserver
	up                        UpstreamObserver
	dial                      DialObserver
	info                      *ConnInfo
	start                     time.Time
	peek                      time.Duration
	serverName, route, target string
	kind                      string
}

// connected tells the UpstreamObserver, if any, that the upstream is
// connected.
func (st *story) connected() {
	if st.up == nil {
		return
	}
	st.up.Connected(&ConnRecord{ConnInfo: *st.info, Start: st.start, Peek: st.peek, ServerName: st.serverName,
		Route: st.route, Kind: st.kind, Target: st.target})
}

// dialFailed tells the DialObserver, if any, that target failed to
// connect.
func (st *story) dialFailed(target string, err error) {
	if st.dial == nil {
		return
	}
	st.dial.DialFailedConn(&ConnRecord{ConnInfo: *st.info, Start: st.start, Peek: st.peek, ServerName: st.serverName,
		Route: st.route, Kind: st.kind, Target: target}, err)
}

// closed tells the ConnObserver, if any, how the connection ended.
func (st *story) closed(outcome string, stats Stats, err error) {
	if st.to == nil {
		return
	}
	if stats.Duration == 0 {
		stats.Duration = time.Since(st.start)
	}
	st.to.Closed(&ConnRecord{ConnInfo: *st.info, Start: st.start, Peek: st.peek, ServerName: st.serverName,
		Route: st.route, Kind: st.kind, Target: st.target, Outcome: outcome, Stats: stats, Err: err})
}
