package gateway

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/syncbuf"
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

// With one of two targets dead (connecting times out), only the first few
// connections pay the connect timeout: after five consecutive failures the
// dead target is tried last, and every later connection reaches the live one
// at once. Without the memory each of them waits for the timeout first.
func TestDeadTargetIsEjected(t *testing.T) {
	dead := blackhole(t)
	b := startBackend(t, echo)
	var counters Counters
	var log syncbuf.Buffer
	gw := startGateway(t, &Server{
		Router:         tableFor(t, map[string][]string{longName: {dead, b.addr()}}),
		ConnectTimeout: 300 * time.Millisecond, Observer: &counters, Logger: newTextLogger(&log),
	})
	hello := helloBytes(t, longName)
	const conns = 20
	for range conns {
		echoed(t, gw, hello).Close()
	}
	snap := counters.Snapshot()
	assert.EqualValues(t, DefaultEjectAfter, snap.DialFailures, "dials of the dead target: until it was ejected, then none")
	assert.Equal(t, conns, b.Load2())
	assert.Equal(t, 1, strings.Count(log.String(), "target ejected"), log.String())
	assert.Contains(t, log.String(), "target="+dead)
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
