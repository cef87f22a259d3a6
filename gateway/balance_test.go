package gateway

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refusedAddr is a loopback address nothing listens on: a dial of it is
// refused at once.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Outlier ejection stays in front of the policy: the target that refuses
// is ejected at its first failed dial, and round robin then takes the two
// others in turn, 50 each of 100.
func TestBalanceWithEjectionInFront(t *testing.T) {
	dead := refusedAddr(t)
	a, b := startBackend(t, echo), startBackend(t, echo)
	var counters Counters
	gw := startGateway(t, &Server{
		Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
			return Route{Name: "web", Targets: []string{dead, a.addr(), b.addr()}, Balance: Balance{Policy: BalanceRoundRobin}}, nil
		}),
		Observer: &counters,
	})
	hello := helloBytes(t, longName)
	echoed(t, gw, hello).Close() // dials dead first, ejects it, lands on a
	for range 100 {
		echoed(t, gw, hello).Close()
	}
	assert.EqualValues(t, 1, counters.Snapshot().DialFailures)
	assert.Equal(t, 101, a.Load2()+b.Load2())
	assert.InDelta(t, 50, b.Load2(), 1, "a %d, b %d", a.Load2(), b.Load2())
}

// A route's counts are released on every way a connection ends: refused
// dials, a router's refusal, forwarded connections, in-process ones. With
// MaxConnections and MaxPendingRequests of 1, twenty connections one after
// the other are never refused over-limit.
func TestLimitsReleasedOnEveryEnd(t *testing.T) {
	one := 1
	limits := Limits{MaxConnections: &one, MaxPendingRequests: &one, MaxConcurrentRequests: &one}
	dead := refusedAddr(t)
	live := startBackend(t, echo)
	var counters Counters
	srv := &Server{
		Router: RouterFunc(func(_ context.Context, h *sni.ClientHello) (Route, error) {
			switch h.ServerName {
			case "dead.example":
				return Route{Name: "r", Targets: []string{dead}, Limits: limits}, nil
			case "served.example":
				return Route{Name: "r", Limits: limits, Serve: func(c net.Conn) {
					buf := make([]byte, 5)
					io.ReadFull(c, buf)
					c.Write(buf)
				}}, nil
			case "live.example":
				return Route{Name: "r", Targets: []string{live.addr()}, Limits: limits}, nil
			}
			return Route{}, Reject("no", "no")
		}),
		Observer: &counters, EjectAfter: -1,
	}
	gw := startGateway(t, srv)
	for range 5 {
		for _, name := range []string{"dead.example", "nothing.example", "served.example", "live.example"} {
			hello := helloBytes(t, name)
			if name == "live.example" {
				echoed(t, gw, hello).Close()
			} else {
				c, err := net.Dial("tcp", gw)
				require.NoError(t, err)
				c.Write(hello)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, c) // until the gateway closes it
				c.Close()
			}
			waitFor(t, "the gateway to forget "+name, func() bool { return srv.ActiveConns() == 0 })
		}
	}
	assert.Zero(t, counters.Snapshot().Rejected[ReasonOverLimit], "%v", counters.Snapshot().Rejected)
	assert.EqualValues(t, 5, counters.Snapshot().Rejected[ReasonDialFailed])
	assert.Equal(t, 5, live.Load2())
}

// No hidden ceiling: without limits a route holds more connections open
// than Envoy's default circuit breaker (1,024), all forwarded.
func TestNoHiddenCeiling(t *testing.T) {
	b := startBackend(t, echo)
	gw := startGateway(t, &Server{Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
		return Route{Name: "r", Targets: []string{b.addr()}, Balance: Balance{Policy: BalanceLeastRequest}}, nil
	})})
	hello := helloBytes(t, longName)
	const n = 1100
	for range n {
		c := echoed(t, gw, hello)
		t.Cleanup(func() { c.Close() })
	}
	assert.Equal(t, n, b.Load2())
}
