package gateway

import (
	"context"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// blackhole returns a loopback address where connecting times out: a
// socket that listens with a backlog of 0 and never accepts, whose queue is
// already full, so the kernel drops further SYNs.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 0))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	for i := 0; ; i++ {
		require.Less(t, i, 64, "the queue never filled")
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			require.ErrorContains(t, err, "timeout")
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
}

// With one of two targets dead (connecting times out) and the route
// rotating its targets, one connection pays the connect timeout: the dead
// target is ejected at its first failed dial and tried last from then on,
// while probes (which no client waits for) keep finding it dead. Before,
// five connections paid it, and one more every 30 s.
func TestDeadTargetCostsOneConnection(t *testing.T) {
	dead := blackhole(t)
	b := startBackend(t, echo)
	var counters Counters
	var log syncbuf.Buffer
	var turn Rotation
	gw := startGateway(t, &Server{
		Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
			return Route{Name: "web", Targets: turn.Of([]string{dead, b.addr()})}, nil
		}),
		ConnectTimeout: 300 * time.Millisecond, Observer: &counters, Logger: newTextLogger(&log),
	})
	hello := helloBytes(t, longName)
	const conns = 100
	took := make([]time.Duration, 0, conns)
	for range conns {
		start := time.Now()
		echoed(t, gw, hello).Close()
		took = append(took, time.Since(start))
	}
	snap := counters.Snapshot()
	assert.EqualValues(t, 1, snap.DialFailures, "one client dial of the dead target, then none")
	assert.Equal(t, conns, b.Load2())
	assert.Equal(t, 1, strings.Count(log.String(), "target ejected"), log.String())
	assert.Contains(t, log.String(), "target="+dead)
	slices.Sort(took)
	t.Logf("%d sequential connections, one of two targets dead, 300 ms connect timeout: p50 %v, p99 %v, max %v",
		conns, took[conns/2].Round(time.Microsecond), took[conns*99/100-1].Round(time.Microsecond), took[conns-1].Round(time.Millisecond))
}

// An ejected target that comes back is readmitted by a probe, without a
// client having to try it, and takes its share of connections again.
func TestEjectedTargetIsReadmittedByAProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	revived := ln.Addr().String()
	ln.Close() // refused for now
	live := startBackend(t, echo)
	var counters Counters
	var log syncbuf.Buffer
	var turn Rotation
	gw := startGateway(t, &Server{
		Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
			return Route{Name: "web", Targets: turn.Of([]string{revived, live.addr()})}, nil
		}),
		Observer: &counters, Logger: newTextLogger(&log),
	})
	hello := helloBytes(t, longName)
	for range 4 {
		echoed(t, gw, hello).Close()
	}
	require.EqualValues(t, 1, counters.Snapshot().DialFailures)

	ln, err = net.Listen("tcp", revived)
	require.NoError(t, err)
	back := serveBackend(t, ln, echo)
	// The backend counts the probe's connection when its Accept returns,
	// which may be after the gateway has said it readmitted the target.
	waitFor(t, "a probe to readmit the target", func() bool { return strings.Contains(log.String(), "readmitted") && back.Load2() > 0 })
	probes := back.Load2() // the probe's connection
	for range 4 {
		echoed(t, gw, hello).Close()
	}
	assert.Equal(t, probes+2, back.Load2(), "half the connections again, rotated")
	assert.EqualValues(t, 1, counters.Snapshot().DialFailures, "no client dialled it while it was dead")
}

// A route's own ConnectTimeout bounds its dials, however long the server's:
// the client is refused once the route's timeout passes, long before the
// server's hour would.
func TestRouteConnectTimeoutOverridesTheServers(t *testing.T) {
	dead := blackhole(t)
	var counters Counters
	gw := startGateway(t, &Server{
		Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
			return Route{Name: "slow", Targets: []string{dead}, ConnectTimeout: 200 * time.Millisecond}, nil
		}),
		ConnectTimeout: time.Hour, Observer: &counters,
	})
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	c.Write(helloBytes(t, longName))
	waitFor(t, "the route's timeout to end the dial", func() bool { return counters.Snapshot().DialFailures == 1 })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "refused: closed without a byte")
}
