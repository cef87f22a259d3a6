package consulview

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/agenterr"
)

// classify wraps err as ErrPermissionDenied (naming what a gateway's token
// needs) or ErrAgentUnreachable where it is one of those.
func classify(what string, err error) error { return agenterr.Classify("consulview", what, err) }

// filtered turns an answer that Consul filtered by ACLs into an error: a
// gateway that silently saw only part of the mesh would route wrongly.
func filtered(what string, meta *api.QueryMeta) error {
	if meta != nil && meta.ResultsFilteredByACLs {
		return fmt.Errorf("consulview: %w while %s: results were filtered by ACLs; a mesh gateway's token needs service:read on all services and node:read", ErrPermissionDenied, what)
	}
	return nil
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
	c.watch(ctx, what+key, index, func(qctx context.Context, idx uint64) (uint64, error) { return load(qctx, key, idx) }, laneShared)
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
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
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
