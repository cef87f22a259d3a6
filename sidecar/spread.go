package sidecar

import (
	"cmp"
	"context"
	"net"
	"sync"
	"sync/atomic"

	"github.com/meshgate/meshgate/internal/balance"
	"github.com/meshgate/meshgate/internal/outlier"
	"github.com/meshgate/meshgate/resolve"
)

// spread is a Dialer's state for spreading connections over each target's
// addresses: where each target's turn stands, the addresses that failed to
// connect (ejected, probed until they answer, as the gateway's), and the
// connections open on each address (least_request).
type spread struct {
	once    sync.Once
	health  *outlier.Set
	stop    context.CancelFunc
	mu      sync.Mutex
	pickers map[string]*balance.Picker // by target: route and SNI
	open    sync.Map                   // address -> *atomic.Int64
}

func (d *Dialer) spreadState() *spread {
	s := &d.spread
	s.once.Do(func() {
		s.health = outlier.New(1, d.EjectFor)
		var ctx context.Context
		ctx, s.stop = context.WithCancel(context.Background())
		s.health.Ctx = ctx
		s.health.Dial = (&net.Dialer{}).DialContext
		s.health.Timeout = d.connectTimeout
		s.pickers = map[string]*balance.Picker{}
	})
	return s
}

// Close stops the probes of the addresses that failed to connect. A Dialer
// may still dial after Close; its failed addresses are then readmitted
// only by a dial that connects.
func (d *Dialer) Close() error {
	s := d.spreadState()
	s.stop()
	s.health.Wait()
	return nil
}

// balanceFor is the policy t's addresses are spread by: Dialer.Balance's
// when it sets one, else the plan's.
func (d *Dialer) balanceFor(t resolve.Target) balance.Policy {
	b := t.Balance
	if d.Balance.Policy != "" {
		b = d.Balance
	}
	return balance.Policy{Name: cmp.Or(b.Policy, balance.RoundRobin), ChoiceCount: b.ChoiceCount}
}

// order returns t's addresses in the order one connection dials them: the
// policy's choice first among those not ejected, the others not ejected
// after it, then the ejected ones (the longest ejected last).
func (d *Dialer) order(t resolve.Target) []string {
	s := d.spreadState()
	if len(t.Dial) < 2 {
		return t.Dial
	}
	key := string(t.Route) + " " + t.SNI
	s.mu.Lock()
	p := s.pickers[key]
	if p == nil {
		p = &balance.Picker{}
		s.pickers[key] = p
	}
	s.mu.Unlock()
	mask := s.health.Mask(t.Dial)
	var out func(int) bool
	if mask != nil {
		out = func(i int) bool { return mask[i] }
	}
	pol := d.balanceFor(t)
	var active func(int) int
	if pol.Name == balance.LeastRequest {
		active = func(i int) int { return int(s.openOn(t.Dial[i]).Load()) }
	}
	ordered := p.Targets(pol, t.Dial, t.Weights, out, active)
	if mask != nil {
		n := 0
		for _, m := range mask {
			if m {
				n++
			}
		}
		tail := ordered[len(ordered)-n:]
		copy(tail, s.health.Order(tail))
	}
	return ordered
}

func (s *spread) openOn(addr string) *atomic.Int64 {
	if n, ok := s.open.Load(addr); ok {
		return n.(*atomic.Int64)
	}
	n, _ := s.open.LoadOrStore(addr, &atomic.Int64{})
	return n.(*atomic.Int64)
}

// counted is a raw connection counted among its address's open ones until
// it is closed.
type counted struct {
	net.Conn
	n    *atomic.Int64
	once sync.Once
}

func (c *counted) Close() error {
	c.once.Do(func() { c.n.Add(-1) })
	return c.Conn.Close()
}

// connected records a dial of addr that connected, and returns raw counted
// among addr's open connections.
func (d *Dialer) connected(addr string, raw net.Conn) net.Conn {
	s := d.spreadState()
	s.health.Succeeded(addr)
	n := s.openOn(addr)
	n.Add(1)
	return &counted{Conn: raw, n: n}
}

// failed records a dial of addr that did not connect: it is ejected.
func (d *Dialer) failed(addr string) { d.spreadState().health.Failed(addr) }
