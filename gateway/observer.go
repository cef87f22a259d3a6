package gateway

import (
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Observer receives the events of a Server, for metrics. Its methods are
// called concurrently from connection goroutines and must not block.
type Observer interface {
	// Accepted is called for each accepted connection.
	Accepted(remote net.Addr)
	// Rejected is called when a connection is closed without being routed:
	// reason is one of the Reason constants or a Router's Rejection reason.
	Rejected(reason string, err error)
	// DialFailed is called for each target that could not be dialled.
	DialFailed(route, target string, err error)
	// Forwarded is called when a routed connection ends.
	Forwarded(route, target string, s Stats)
}

// LimitObserver is an Observer that is also told when a limit holds new
// connections back: the Server stops accepting, and clients wait in the
// listen backlog, until a connection closes. A Server looks for it on its
// Observer.
type LimitObserver interface {
	Observer
	// HeldBack is called each time accepting starts to wait, with the limit
	// that holds it: LimitMaxConns or LimitOpenFiles.
	HeldBack(limit string)
}

// ConnObserver is an Observer that also hears, once per accepted
// connection, its whole story when the Server is done with it: for access
// logs and latency histograms. A Server looks for it on its Observer, and
// builds the record only then.
type ConnObserver interface {
	Observer
	// Closed is called once per accepted connection, forwarded or not,
	// after the Observer's Forwarded or Rejected for it.
	Closed(r *ConnRecord)
}

// UpstreamObserver is an Observer that is also told when a routed
// connection's upstream is connected, before its first byte is forwarded.
// Forwarded and Closed come only when a connection ends, which for Consul's
// pooled server connections (WAN federation, peering) can be hours later;
// this event lets metrics count and gauge such connections while they are
// open. A Server looks for it on its Observer, and builds the record only
// then.
type UpstreamObserver interface {
	Observer
	// Connected is called once per forwarded connection, after its upstream
	// is connected and before Forwarded and Closed for it. The record's
	// Outcome and Stats are not set yet.
	Connected(r *ConnRecord)
}

// DialObserver is an Observer that is also told of each failed dial with
// the connection's record (its ServerName, Route, Kind, and the Target that
// failed), where Observer.DialFailed has only the route's name: for metrics
// per upstream, such as Envoy's per-cluster connect failures. A Server
// looks for it on its Observer, and builds the record only then.
type DialObserver interface {
	Observer
	// DialFailedConn is called once per failed dial of a target, after
	// Observer.DialFailed for it and before the connection's Connected
	// (another target connected) or Closed. The record's Outcome and Stats
	// are not set.
	DialFailedConn(r *ConnRecord, err error)
}

// ConnRecord is one connection's story. It is valid only during the
// ConnObserver's Closed call (or the UpstreamObserver's Connected call);
// copy what you keep.
type ConnRecord struct {
	ConnInfo
	// Start is when the connection was accepted.
	Start time.Time
	// Peek is how long reading the ClientHello took (up to its failure).
	Peek time.Duration
	// ServerName is the ClientHello's SNI, empty if none was read.
	ServerName string
	// Route and Target are the route taken and the target dialled, where
	// the connection got that far.
	Route, Target string
	// Kind is the route's Kind, where the connection got that far.
	Kind string
	// Outcome is OutcomeForwarded, or the rejection's reason.
	Outcome string
	// Stats are the forwarded connection's bytes and duration; for a
	// rejected one only Duration is set.
	Stats Stats
	// Err is the rejection's error, or the error that ended a forwarded
	// connection (Stats.Err); nil for a clean close.
	Err error
}

// OutcomeForwarded is a ConnRecord's Outcome for a connection that was
// forwarded (whatever ended it).
const OutcomeForwarded = "forwarded"

// MultiObserver returns an Observer that passes every event to each of
// observers in turn, including the LimitObserver, ConnObserver,
// UpstreamObserver and DialObserver events to those that implement them. Nil observers are
// left out.
func MultiObserver(observers ...Observer) Observer {
	m := &multiObserver{}
	for _, o := range observers {
		if o == nil {
			continue
		}
		m.all = append(m.all, o)
		if lo, ok := o.(LimitObserver); ok {
			m.limit = append(m.limit, lo)
		}
		if co, ok := o.(ConnObserver); ok {
			m.conn = append(m.conn, co)
		}
		if uo, ok := o.(UpstreamObserver); ok {
			m.upstream = append(m.upstream, uo)
		}
		if do, ok := o.(DialObserver); ok {
			m.dial = append(m.dial, do)
		}
	}
	return m
}

// dialObserverOf returns o as a DialObserver, or nil if it is none or is
// a MultiObserver without one.
func dialObserverOf(o Observer) DialObserver {
	if m, ok := o.(*multiObserver); ok && len(m.dial) == 0 {
		return nil
	}
	do, _ := o.(DialObserver)
	return do
}

// connObserverOf returns o as a ConnObserver, or nil if it is none or is a
// MultiObserver without one, so that no record is built for nobody.
func connObserverOf(o Observer) ConnObserver {
	if m, ok := o.(*multiObserver); ok && len(m.conn) == 0 {
		return nil
	}
	co, _ := o.(ConnObserver)
	return co
}

// upstreamObserverOf returns o as an UpstreamObserver, or nil if it is none
// or is a MultiObserver without one.
func upstreamObserverOf(o Observer) UpstreamObserver {
	if m, ok := o.(*multiObserver); ok && len(m.upstream) == 0 {
		return nil
	}
	uo, _ := o.(UpstreamObserver)
	return uo
}

// multiObserver sorts its observers by interface once, so no event pays a
// type assertion.
type multiObserver struct {
	all      []Observer
	limit    []LimitObserver
	conn     []ConnObserver
	upstream []UpstreamObserver
	dial     []DialObserver
}

var _ interface {
	LimitObserver
	ConnObserver
	UpstreamObserver
	DialObserver
} = (*multiObserver)(nil)

func (m *multiObserver) Accepted(remote net.Addr) {
	for _, o := range m.all {
		o.Accepted(remote)
	}
}

func (m *multiObserver) Rejected(reason string, err error) {
	for _, o := range m.all {
		o.Rejected(reason, err)
	}
}

func (m *multiObserver) DialFailed(route, target string, err error) {
	for _, o := range m.all {
		o.DialFailed(route, target, err)
	}
}

func (m *multiObserver) Forwarded(route, target string, s Stats) {
	for _, o := range m.all {
		o.Forwarded(route, target, s)
	}
}

func (m *multiObserver) HeldBack(limit string) {
	for _, o := range m.limit {
		o.HeldBack(limit)
	}
}

func (m *multiObserver) Closed(r *ConnRecord) {
	for _, o := range m.conn {
		o.Closed(r)
	}
}

func (m *multiObserver) DialFailedConn(r *ConnRecord, err error) {
	for _, o := range m.dial {
		o.DialFailedConn(r, err)
	}
}

func (m *multiObserver) Connected(r *ConnRecord) {
	for _, o := range m.upstream {
		o.Connected(r)
	}
}

// The limits a LimitObserver hears of.
const (
	// LimitMaxConns is Server.MaxConns.
	LimitMaxConns = "max-conns"
	// LimitOpenFiles is the process's share of its open-file limit for
	// connections (see Server.ConnLimit).
	LimitOpenFiles = "open-files"
)

// Stats describes one forwarded connection.
type Stats struct {
	// ClientToUpstream and UpstreamToClient count the bytes moved each way,
	// including the replayed ClientHello.
	ClientToUpstream int64
	UpstreamToClient int64
	// Spliced reports whether the bytes moved with splice(2), in the kernel,
	// rather than through a user-space buffer.
	Spliced bool
	// Duration is the time from accept to close.
	Duration time.Duration
	// Err is the first error that ended the connection other than a clean
	// close by either side (for example ErrIdleTimeout), or nil.
	Err error
}

// Counters is an Observer that counts events, safe for concurrent use. Its
// zero value is ready.
type Counters struct {
	accepted, forwarded, dialFailures atomic.Int64
	bytesUp, bytesDown                atomic.Int64
	spliced                           atomic.Int64
	heldMaxConns, heldOpenFiles       atomic.Int64

	mu       sync.Mutex
	rejected map[string]int64
}

var _ LimitObserver = (*Counters)(nil)

// Accepted counts an accepted connection.
func (c *Counters) Accepted(net.Addr) { c.accepted.Add(1) }

// Rejected counts a rejection by reason.
func (c *Counters) Rejected(reason string, _ error) {
	c.mu.Lock()
	if c.rejected == nil {
		c.rejected = map[string]int64{}
	}
	c.rejected[reason]++
	c.mu.Unlock()
}

// DialFailed counts a failed dial.
func (c *Counters) DialFailed(string, string, error) { c.dialFailures.Add(1) }

// Forwarded counts a finished connection and its bytes.
func (c *Counters) Forwarded(_, _ string, s Stats) {
	c.forwarded.Add(1)
	c.bytesUp.Add(s.ClientToUpstream)
	c.bytesDown.Add(s.UpstreamToClient)
	if s.Spliced {
		c.spliced.Add(1)
	}
}

// HeldBack counts a wait on a limit.
func (c *Counters) HeldBack(limit string) {
	switch limit {
	case LimitMaxConns:
		c.heldMaxConns.Add(1)
	case LimitOpenFiles:
		c.heldOpenFiles.Add(1)
	}
}

// Snapshot is a copy of the Counters at one moment.
type Snapshot struct {
	Accepted, Forwarded, Spliced, DialFailures int64
	BytesUp, BytesDown                         int64
	Rejected                                   map[string]int64
	// HeldBackMaxConns and HeldBackOpenFiles count the times accepting
	// waited on MaxConns and on the open-file limit.
	HeldBackMaxConns, HeldBackOpenFiles int64
}

// Snapshot returns the current counts.
func (c *Counters) Snapshot() Snapshot {
	c.mu.Lock()
	rej := make(map[string]int64, len(c.rejected))
	for k, v := range c.rejected {
		rej[k] = v
	}
	c.mu.Unlock()
	return Snapshot{
		Accepted: c.accepted.Load(), Forwarded: c.forwarded.Load(), Spliced: c.spliced.Load(),
		DialFailures: c.dialFailures.Load(), BytesUp: c.bytesUp.Load(), BytesDown: c.bytesDown.Load(), Rejected: rej,
		HeldBackMaxConns: c.heldMaxConns.Load(), HeldBackOpenFiles: c.heldOpenFiles.Load(),
	}
}

// RejectedTotal sums the rejections over all reasons.
func (s Snapshot) RejectedTotal() int64 {
	var n int64
	for _, v := range s.Rejected {
		n += v
	}
	return n
}

// Reasons lists the rejection reasons seen, sorted.
func (s Snapshot) Reasons() []string {
	out := make([]string, 0, len(s.Rejected))
	for r := range s.Rejected {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

type nopObserver struct{}

func (nopObserver) Accepted(net.Addr)                {}
func (nopObserver) Rejected(string, error)           {}
func (nopObserver) DialFailed(string, string, error) {}
func (nopObserver) Forwarded(string, string, Stats)  {}
