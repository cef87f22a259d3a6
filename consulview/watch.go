package consulview

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
)

// call names a request in errors: what it is for, its endpoint, and the
// rules a token needs for it.
func call(what, endpoint string, rules ...agenterr.Rule) agenterr.Call {
	return agenterr.Call{What: what, Endpoint: endpoint, Rules: rules}
}

// readAll are the rules of a request that reads services and nodes.
var readAll = []agenterr.Rule{agenterr.ReadServices, agenterr.ReadNodes}

// classify wraps err, the failure of c, as an *agenterr.PermissionError
// (ErrPermissionDenied) naming the endpoint and the rule to add, as
// ErrEnterpriseOnly or as ErrAgentUnreachable where it is one of those.
func classify(c agenterr.Call, err error) error { return agenterr.Classify("consulview", c, err) }

// filtered turns an answer to c that Consul filtered by ACLs into an
// error: a gateway that silently saw only part of the mesh would route
// wrongly.
func filtered(c agenterr.Call, meta *api.QueryMeta) error {
	return agenterr.Filtered("consulview", c, meta)
}

// queryOptions is a blocking query from index, made with ctx, for as long
// as ctx's turn allows (see waitFor).
func (c *Source) queryOptions(ctx context.Context, index uint64) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: waitFor(ctx)}).WithContext(ctx)
}

// keyedLoad is a watch of one member of a family: a service's endpoints, a
// datacenter's gateways.
type keyedLoad func(ctx context.Context, key string, index uint64) (uint64, error)

// startKeyed starts the watch of key, recording its cancel func in set.
// c.mu is held.
func (c *Source) startKeyed(set map[string]context.CancelFunc, what, key string, index uint64, load keyedLoad) {
	ctx, cancel := context.WithCancel(c.ctx)
	set[key] = cancel
	if c.opts.Once {
		return // one view, no watch
	}
	l := laneShared
	if what == gatewaysWatch {
		// A datacenter's gateways going into maintenance (one that shuts
		// down keeps serving only for its grace period) or coming back
		// is what traffic to that datacenter waits on: their watches go
		// before the other shared ones.
		l = laneUrgent
	}
	c.watch(ctx, what+key, index, func(qctx context.Context, idx uint64) (uint64, error) { return load(qctx, key, idx) }, l)
}

// ensureKeyedLocked makes sure key has a watch: before the first load is
// done, a placeholder that New replaces (it loads key, then starts the
// watch); after, the watch itself. c.mu is held.
func (c *Source) ensureKeyedLocked(set map[string]context.CancelFunc, what, key string, load keyedLoad) {
	if _, ok := set[key]; ok {
		return
	}
	if !c.started {
		set[key] = func() {}
		return
	}
	c.startKeyed(set, what, key, 0, load)
}

// firstKeyed loads key once during New, then starts its watch. c.mu
// is held, and released during the load.
//
// Another datacenter that does not answer does not stop the start: its
// watch is started failing and retries with backoff, and the view goes
// without what it would have given (its gateways; for WAN federation the
// federation states, which the local servers hold, still name them). A
// gateway that is the only way to that datacenter must be able to start
// while the datacenter cannot be reached through it.
//
// dc is the datacenter the load asks, "" for the local agent's own data.
func (c *Source) firstKeyed(set map[string]context.CancelFunc, what, key, dc string, load keyedLoad) error {
	c.mu.Unlock()
	idx, err := load(c.ctx, key, 0)
	c.mu.Lock()
	if err != nil {
		if dc == "" || dc == c.state.datacenter {
			return err
		}
		c.log.Warn("consulview: another datacenter does not answer; starting without what it would give, and retrying", "datacenter", dc, "err", err)
		c.failing[what+key] = err
		c.errors++
		idx = 0
	}
	c.startKeyed(set, what, key, idx, load)
	return nil
}

// lane says which agent connection a watch's queries use.
type lane int

const (
	laneOwn    lane = iota // one of its own
	laneShared             // the shared ones, in turn
	laneUrgent             // the shared ones, before the others
)

// watch runs load as a blocking query loop until ctx ends, retrying failures
// with backoff and keeping the last good view meanwhile.
func (c *Source) watch(ctx context.Context, name string, index uint64, load func(context.Context, uint64) (uint64, error), l lane) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if l != laneOwn {
			defer c.turns.join()()
		}
		wait := 100 * time.Millisecond
		for ctx.Err() == nil {
			qctx, done := ctx, func() bool { return false }
			if l != laneOwn {
				var ok bool
				if qctx, done, ok = c.turns.take(ctx, l == laneUrgent); !ok {
					return
				}
			}
			next, err := load(qctx, index)
			preempted := done()
			if ctx.Err() != nil {
				return
			}
			if preempted {
				continue // cut short for a crowd: again, from the same index
			}
			if err != nil {
				c.setFailing(name, err)
				// Retry without blocking: the first answer after an outage
				// refreshes what changed and shows the watch is current.
				index = 0
				pause := wait
				if errors.Is(err, ErrPermissionDenied) {
					// A denial lasts until an operator changes the policy,
					// and each costs an error line in the agent's log.
					pause = max(wait, c.opts.DatacenterRefresh)
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(pause):
				}
				wait = min(2*wait, c.opts.MaxBackoff)
				continue
			}
			c.setFailing(name, nil)
			wait = 100 * time.Millisecond
			if next < index {
				next = 0 // the index went backwards (a restored agent): start over
			}
			index = next
		}
	}()
}

func (c *Source) setFailing(name string, err error) {
	c.mu.Lock()
	_, was := c.failing[name]
	before := len(c.failing)
	if err != nil {
		c.failing[name] = err
		c.errors++
	} else {
		delete(c.failing, name)
	}
	after := len(c.failing)
	c.mu.Unlock()
	switch {
	case err != nil && !was:
		c.log.Warn("consulview: Consul watch failing; routing on the last good view", "watch", name, "err", err.Error())
		if c.opts.OnStale != nil {
			c.opts.OnStale(err)
		}
	case err == nil && was && after == 0 && before > 0:
		c.log.Info("consulview: Consul watches current again")
		if c.opts.OnStale != nil {
			c.opts.OnStale(nil)
		}
	}
}

// The requests made in more than one place.
var (
	callServices         = call("listing services", "GET /v1/catalog/services", agenterr.ReadServices)
	callChecks           = call("reading the health checks", "GET /v1/health/state/any", readAll...)
	callServers          = call("reading the local Consul servers", "GET /v1/health/service/consul", readAll...)
	callFederationStates = call("reading the federation states' mesh gateways", "GET "+federationStatesPath, readAll...)
)

// callConnect is the request of the mesh endpoints of service in dc ("":
// the local datacenter).
func callConnect(service, dc string) agenterr.Call {
	what := "reading the mesh endpoints of " + service
	if dc != "" {
		what += " in " + dc
	}
	return call(what, "GET /v1/health/connect/"+service+dcQuery(dc), readAll...)
}

// dcQuery is the ?dc= of a request to datacenter dc, "" for the local one.
func dcQuery(dc string) string {
	if dc == "" {
		return ""
	}
	return "?dc=" + dc
}
