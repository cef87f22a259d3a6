package l7

import (
	"maps"
	"sync"
)

// Reasons a Terminator refuses a peer's connection or request, or answers
// a request itself, as its Observer and its log name them. Each mirrors
// what Consul's gateway, through Envoy, does in the same case.
const (
	// ReasonHandshake: the peer's TLS handshake failed (a name not
	// exported to it, a client of another CA, a TLS version or cipher suite
	// outside the mesh entry's TLS.Incoming).
	ReasonHandshake = "peer-handshake"
	// ReasonNotExported: the service stopped being exported to the peer
	// while the connection stayed open (403, then the connection closes).
	ReasonNotExported = "no-longer-exported"
	// ReasonConnect: a CONNECT request (404: Consul's routes match paths,
	// which a CONNECT has none of).
	ReasonConnect = "connect"
	// ReasonUpgrade: an upgrade other than websocket and h2c (403, and
	// the connection closes: Envoy's upgrade_failed).
	ReasonUpgrade = "upgrade-refused"
	// ReasonH2CUpgrade: an h2c upgrade, whose headers are dropped; the
	// request is served as HTTP/1.1, as Envoy's HTTP/1 codec does.
	ReasonH2CUpgrade = "h2c-upgrade-refused"
	// ReasonHeadersTooLarge: request headers over the bound (431).
	ReasonHeadersTooLarge = "headers-too-large"
	// ReasonPrematureResets: an HTTP/2 connection that reset too many
	// streams before their answer (GOAWAY, then closed).
	ReasonPrematureResets = "too-many-premature-resets"
	// ReasonHTTP2Error: Go's HTTP/2 server ended the connection with
	// GOAWAY and an error code: the peer broke the protocol or its bounds
	// (a header value longer than the header bound, a compression error),
	// where Envoy's codec too ends the connection.
	ReasonHTTP2Error = "http2-connection-error"
	// ReasonNoHealthyUpstream: no instance to send the request to: none
	// healthy in the catalog, or all ejected by outlier detection (503).
	ReasonNoHealthyUpstream = "no-healthy-upstream"
	// ReasonOverflow: a circuit breaker of the target's cluster is open
	// (503 with x-envoy-overloaded).
	ReasonOverflow = "upstream-overflow"
	// ReasonConnectFailure: no instance could be connected to (503).
	ReasonConnectFailure = "upstream-connect-failure"
	// ReasonReset: the instance's connection or stream ended before its
	// answer (503), or during it (the stream is reset).
	ReasonReset = "upstream-reset"
	// ReasonTimeout: the route timeout passed (504, or a reset once the
	// answer has begun).
	ReasonTimeout = "upstream-timeout"
	// ReasonIdleTimeout: the request's stream was idle too long (408, or
	// a reset once the answer has begun).
	ReasonIdleTimeout = "stream-idle-timeout"
)

// Observer hears what a Terminator refuses and what its clusters do, for
// metrics. Its methods are called concurrently and must not block.
type Observer interface {
	// Refused is called once per connection or request refused or
	// answered by the terminator itself, with one of the Reason constants.
	Refused(reason string)
	// Retried is called for each retry, with the target's SNI and the
	// instance whose answer (or failure) is retried.
	Retried(target, instance string)
	// Ejected is called when outlier detection ejects an instance of a
	// target (ejected true) and when it brings it back (false), or the
	// instance leaves the target's endpoints while ejected (false too: it
	// is no longer one of the target's ejected instances, as Envoy's
	// ejections_active no longer counts it).
	Ejected(target, instance string, ejected bool)
}

// Counters is an Observer that counts, for tests and simple metrics. The
// zero value is ready to use.
type Counters struct {
	mu       sync.Mutex
	refused  map[string]int
	retried  map[string]int
	ejected  map[string]int
	returned map[string]int
}

var _ Observer = (*Counters)(nil)

// Refused counts a refusal by reason.
func (c *Counters) Refused(reason string) { c.add(&c.refused, reason) }

// Retried counts a retry by instance.
func (c *Counters) Retried(_, instance string) { c.add(&c.retried, instance) }

// Ejected counts an ejection, or a return, by instance.
func (c *Counters) Ejected(_, instance string, ejected bool) {
	if ejected {
		c.add(&c.ejected, instance)
	} else {
		c.add(&c.returned, instance)
	}
}

func (c *Counters) add(m *map[string]int, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[key]++
}

// CountersSnapshot is a copy of a Counters' counts.
type CountersSnapshot struct {
	// Refused counts by reason; Retried, Ejected and Returned by instance
	// address.
	Refused, Retried, Ejected, Returned map[string]int
}

// Snapshot returns a copy of the counts.
func (c *Counters) Snapshot() CountersSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CountersSnapshot{Refused: maps.Clone(c.refused), Retried: maps.Clone(c.retried), Ejected: maps.Clone(c.ejected), Returned: maps.Clone(c.returned)}
}

type nopObserver struct{}

func (nopObserver) Refused(string)               {}
func (nopObserver) Retried(string, string)       {}
func (nopObserver) Ejected(string, string, bool) {}
