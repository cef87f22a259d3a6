package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/sni"
)

// Route is where a connection goes: a name for logs and metrics and the
// addresses to dial, in order; the server tries the next when one fails.
type Route struct {
	Name    string
	Targets []string
	// Kind classifies the route for metrics and logs with a word from a
	// small, fixed set, such as "service", "gateway" or "wan-federation"
	// for the routers of this module (see their packages); unlike Name it
	// never names a service, so a label of it stays bounded. Empty means
	// the Router gives none.
	Kind string
	// ConnectTimeout bounds each dial of this route's targets, as a
	// service-resolver's ConnectTimeout does in Consul; zero means the
	// Server's.
	ConnectTimeout time.Duration
	// Remote says the targets are gateways of another datacenter, partition
	// or cluster peer rather than service instances: the Server applies its
	// RemoteKeepAlive to these connections, as Consul's gateway applies its
	// remote TCP keepalive options to remote gateway upstreams only.
	Remote bool
	// KeepAlive, when Enable is set, is the TCP keepalive of this route's
	// upstream connections, over the Server's TCPKeepAlive and
	// RemoteKeepAlive: a Router can change it while the Server runs.
	KeepAlive net.KeepAliveConfig
	// Serve, when set, serves the connection in this process instead of
	// a dial to Targets, which may then be empty: a Router that terminates
	// TLS itself (routing.PeeringRouter with an l7.Terminator) hands it the
	// client's connection, whose first reads return the ClientHello again.
	// Serve owns the connection and returns once it is done with it. Until
	// then the connection holds its slot and counts as open, as a
	// forwarded one does; Close, and Shutdown's caller, close it under
	// Serve. Observers see it forwarded to target TargetInProcess, with the
	// bytes Serve read from the client and wrote to it.
	Serve func(net.Conn)
	// Balance says which of Targets a connection tries first; the zero
	// value tries them in the order given. The others follow as fallbacks,
	// the ejected ones last, whatever the policy.
	Balance Balance
	// Weights holds the weight of each of Targets, in order, for Balance
	// (Consul's instance weights, 1 to 128); nil means all 1.
	Weights []int
	// Limits bound this route's connections, as Envoy's circuit breakers
	// bound a cluster's; the zero value bounds nothing.
	Limits Limits
}

// Load-balancing policies of Balance, with the names a Consul
// service-resolver's LoadBalancer gives them.
const (
	BalanceRoundRobin   = "round_robin"
	BalanceLeastRequest = "least_request"
	BalanceRandom       = "random"
)

// Balance is how a Server chooses the first of a route's targets a
// connection tries, as Envoy balances a cluster under Consul.
type Balance struct {
	// Policy is "" (the targets in the order given), BalanceRoundRobin
	// (in turn; by their weights when they differ, spread smoothly),
	// BalanceLeastRequest (among ChoiceCount targets taken at random, the
	// one with the fewest open connections; with weights that differ, in
	// turn by weight/(open connections+1)) or BalanceRandom (at random, by
	// weight). Another name is round robin. The turn is the Server's, per
	// route Name; it starts again when the targets change.
	Policy string
	// ChoiceCount is how many targets BalanceLeastRequest samples; below 2
	// means 2, Envoy's default.
	ChoiceCount int
}

// Limits bound one route's connections, counted per route Name across the
// Server's listeners and engines, as Envoy's circuit breakers bound a
// cluster's (Consul's UpstreamLimits). A connection over a limit is
// refused at once with ReasonOverLimit, never queued. A nil field bounds
// nothing (Envoy would apply 1,024; see docs/routing.md), and 0 refuses
// every connection, as Envoy does.
type Limits struct {
	// MaxConnections bounds the connections open at once: dialling or
	// forwarded.
	MaxConnections *int
	// MaxPendingRequests bounds the connections whose upstream is being
	// dialled, as Envoy's bound on requests waiting for a connection.
	MaxPendingRequests *int
	// MaxConcurrentRequests bounds the connections open at once, as Envoy
	// counts each TCP connection as one request; checked when the
	// connection is admitted (Envoy checks it once the upstream is
	// connected: the same refusal, one dial less).
	MaxConcurrentRequests *int
}

// IsZero reports whether l bounds nothing.
func (l Limits) IsZero() bool {
	return l.MaxConnections == nil && l.MaxPendingRequests == nil && l.MaxConcurrentRequests == nil
}

// TargetInProcess is the target observers see for a connection a
// Route.Serve served.
const TargetInProcess = "in-process"

// Router decides where a connection goes from its ClientHello. It returns a
// Route with at least one target, or an error: a *Rejection (see Reject) to
// refuse the connection with a reason; any other error refuses it with
// reason ReasonRouterError, so that a Router that fails (a backend it
// consults is down) does not look like one that knows no such name. The hello is the Router's: it and its
// strings and slices may be kept, and a Server never writes to it again.
// Route is called concurrently.
type Router interface {
	Route(ctx context.Context, hello *sni.ClientHello) (Route, error)
}

// RouterFunc adapts a function to Router.
type RouterFunc func(ctx context.Context, hello *sni.ClientHello) (Route, error)

// Route calls f.
func (f RouterFunc) Route(ctx context.Context, hello *sni.ClientHello) (Route, error) {
	return f(ctx, hello)
}

// ErrRejected is wrapped by every *Rejection.
var ErrRejected = errors.New("gateway: connection rejected")

// Rejection is a refused connection: a short Reason for metrics (such as
// "no-route", "foreign-trust-domain") and the error that explains it.
type Rejection struct {
	Reason string
	Err    error
}

// Reject returns a *Rejection with reason and a message formatted from format
// and args (which may wrap an error with %w).
func Reject(reason, format string, args ...any) error {
	return &Rejection{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Error describes the rejection with its reason.
func (r *Rejection) Error() string { return "gateway: rejected (" + r.Reason + "): " + r.Err.Error() }

// Unwrap returns ErrRejected and the underlying error.
func (r *Rejection) Unwrap() []error { return []error{ErrRejected, r.Err} }

// Reasons the server itself reports to the Observer, besides the Router's.
const (
	ReasonNotTLS      = "not-tls"
	ReasonMalformed   = "malformed-hello"
	ReasonBadName     = "invalid-server-name"
	ReasonTooLarge    = "hello-too-large"
	ReasonPeekTimeout = "peek-timeout"
	ReasonClosed      = "closed-before-hello"
	ReasonNoRoute     = "no-route"
	// ReasonRouterError: the Router failed with an error that is not a
	// *Rejection.
	ReasonRouterError = "router-error"
	ReasonDialFailed  = "dial-failed"
	ReasonShutdown    = "shutdown"
	ReasonLoop        = "loop"
	// ReasonOverLimit: the route's Limits refused the connection.
	ReasonOverLimit = "over-limit"
)

// Rotation spreads connections over a route's targets: Of returns the
// targets starting at the next position of a counter it keeps (the first
// call at the first target), so that each target comes first in turn and
// the rest follow as fallbacks. The zero value is ready and safe for
// concurrent use. A Router can instead leave its targets in order and set
// Route.Balance, which the Server applies with weights, least_request and
// ejection in front.
type Rotation struct{ n atomic.Uint32 }

// Of returns a new slice with targets rotated to the next start; targets
// itself is not changed. A list of fewer than two is returned as it is.
func (r *Rotation) Of(targets []string) []string {
	if len(targets) < 2 {
		return targets
	}
	i := int((r.n.Add(1) - 1) % uint32(len(targets)))
	return append(append(make([]string, 0, len(targets)), targets[i:]...), targets[:i]...)
}

// KindTable is the Kind of a Table's routes.
const KindTable = "table"

// Table is a Router for users who do not use Consul: exact server names and
// "*.suffix" wildcards. An exact name wins over a wildcard, and a longer
// suffix over a shorter one; "*.example.com" matches "a.example.com" and
// "a.b.example.com" but not "example.com". Names are matched lower-case.
type Table struct {
	exact    map[string][]string
	suffixes []suffixRoute // longest first
}

type suffixRoute struct {
	suffix  string // ".example.com"
	targets []string
}

var _ Router = (*Table)(nil)

// NewTable builds a Table from patterns to targets. It fails on an empty
// pattern, a wildcard other than a leading "*.", or a pattern without targets.
func NewTable(routes map[string][]string) (*Table, error) {
	t := &Table{exact: map[string][]string{}}
	var errs []error
	for pattern, targets := range routes {
		p := strings.ToLower(pattern)
		switch {
		case len(targets) == 0:
			errs = append(errs, fmt.Errorf("gateway: route %q has no targets", pattern))
		case strings.HasPrefix(p, "*.") && len(p) > 2 && !strings.Contains(p[1:], "*"):
			t.suffixes = append(t.suffixes, suffixRoute{p[1:], targets})
		case p == "" || strings.Contains(p, "*"):
			errs = append(errs, fmt.Errorf("gateway: route pattern %q: want a name or *.suffix", pattern))
		default:
			t.exact[p] = targets
		}
	}
	sort.Slice(t.suffixes, func(i, j int) bool { return len(t.suffixes[i].suffix) > len(t.suffixes[j].suffix) })
	return t, problems.Join(errs...)
}

// Route returns the targets for hello's server name, or a rejection with
// reason "no-route".
func (t *Table) Route(_ context.Context, hello *sni.ClientHello) (Route, error) {
	name := hello.ServerName
	if targets, ok := t.exact[name]; ok {
		return Route{Name: name, Targets: targets, Kind: KindTable}, nil
	}
	for _, s := range t.suffixes {
		if strings.HasSuffix(name, s.suffix) {
			return Route{Name: "*" + s.suffix, Targets: s.targets, Kind: KindTable}, nil
		}
	}
	if name == "" {
		return Route{}, Reject(ReasonNoRoute, "no server name")
	}
	return Route{}, Reject(ReasonNoRoute, "no route for %q", name)
}

// Switch is a Router that forwards to another Router which can be replaced
// at any time, for reloading routes without touching the listener. New
// connections use the new Router; established ones are not affected. The zero
// Switch rejects everything until Store is called.
type Switch struct {
	r atomic.Pointer[Router]
}

// Store replaces the Router.
func (s *Switch) Store(r Router) { s.r.Store(&r) }

// Route calls the current Router.
func (s *Switch) Route(ctx context.Context, hello *sni.ClientHello) (Route, error) {
	r := s.r.Load()
	if r == nil {
		return Route{}, Reject(ReasonNoRoute, "no router configured")
	}
	return (*r).Route(ctx, hello)
}
