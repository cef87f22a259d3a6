package gateway

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// keepAliveOf reads a socket's keepalive settings from the kernel.
func keepAliveOf(t *testing.T, c *net.TCPConn) (on bool, idle, interval, count int) {
	t.Helper()
	raw, err := c.SyscallConn()
	require.NoError(t, err)
	require.NoError(t, raw.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, err := unix.GetsockoptInt(int(fd), level, opt)
			require.NoError(t, err)
			return v
		}
		on = get(unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0
		idle = get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		interval = get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		count = get(unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
	}))
	return on, idle, interval, count
}

// RemoteKeepAlive reaches the kernel for the upstream sockets of Remote
// routes, and only theirs: a local route's upstream keeps keepalive off. A
// route's own KeepAlive wins over the server's.
func TestRemoteKeepAliveOnlyForRemoteRoutes(t *testing.T) {
	remote, local, own := startBackend(t, echo), startBackend(t, echo), startBackend(t, echo)
	var mu sync.Mutex
	dialled := map[string]*net.TCPConn{} // by target
	gw := startGateway(t, &Server{
		Router: RouterFunc(func(_ context.Context, h *sni.ClientHello) (Route, error) {
			if h.ServerName == "remote.example" {
				return Route{Name: "remote", Targets: []string{remote.addr()}, Remote: true}, nil
			}
			if h.ServerName == "own.example" {
				return Route{Name: "own", Targets: []string{own.addr()}, Remote: true,
					KeepAlive: net.KeepAliveConfig{Enable: true, Idle: 11 * time.Second, Interval: 5 * time.Second, Count: 2}}, nil
			}
			return Route{Name: "local", Targets: []string{local.addr()}}, nil
		}),
		RemoteKeepAlive: net.KeepAliveConfig{Enable: true, Idle: 42 * time.Second, Interval: 7 * time.Second, Count: 3},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{KeepAlive: -1}).DialContext(ctx, network, addr)
			if err == nil {
				mu.Lock()
				dialled[addr] = c.(*net.TCPConn)
				mu.Unlock()
			}
			return c, err
		},
	})
	for _, name := range []string{"remote.example", "local.example", "own.example"} {
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		hello := helloBytes(t, name)
		_, err = c.Write(hello)
		require.NoError(t, err)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = io.ReadFull(c, make([]byte, len(hello)))
		require.NoError(t, err, name)
	}
	mu.Lock()
	defer mu.Unlock()
	on, idle, interval, count := keepAliveOf(t, dialled[remote.addr()])
	assert.True(t, on, "remote route: keepalive on")
	assert.Equal(t, []int{42, 7, 3}, []int{idle, interval, count}, "remote route: idle, interval (s), probes")
	on, _, _, _ = keepAliveOf(t, dialled[local.addr()])
	assert.False(t, on, "local route: keepalive stays off")
	on, idle, interval, count = keepAliveOf(t, dialled[own.addr()])
	assert.True(t, on)
	assert.Equal(t, []int{11, 5, 2}, []int{idle, interval, count}, "the route's own keepalive")
}
