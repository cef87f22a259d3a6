package liveconfig_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/liveconfig"
	"github.com/meshgate/meshgate/proxyconfig"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The options in force reach each route: the connect timeout where the
// route has none of its own (a resolver's wins, a fixed one wins over the
// options), the remote keepalive for remote routes only; a change applies
// to the next route at once.
func TestOptionsReachTheRoutes(t *testing.T) {
	next := gateway.RouterFunc(func(_ context.Context, h *sni.ClientHello) (gateway.Route, error) {
		switch h.ServerName {
		case "remote":
			return gateway.Route{Name: "remote", Targets: []string{"x:1"}, Remote: true}, nil
		case "resolver":
			return gateway.Route{Name: "resolver", Targets: []string{"x:1"}, ConnectTimeout: 7 * time.Second}, nil
		}
		return gateway.Route{Name: "local", Targets: []string{"x:1"}}, nil
	})
	route := func(r gateway.Router, name string) gateway.Route {
		got, err := r.Route(context.Background(), &sni.ClientHello{ServerName: name})
		require.NoError(t, err)
		return got
	}
	ka := proxyconfig.Gateway{ConnectTimeout: 1500 * time.Millisecond}
	ka.RemoteKeepAlive.Enable, ka.RemoteKeepAlive.Idle = true, 42*time.Second
	s := &gateway.Server{Router: next}
	l := liveconfig.New(s, proxyconfig.Gateway{}, liveconfig.Options{})
	t.Cleanup(func() {
		s.Close()
		l.Wait()
	})
	r := l.Router(next)
	assert.Zero(t, route(r, "local").ConnectTimeout, "no option: the Server's")
	require.NoError(t, l.Apply(context.Background(), ka, []string{"127.0.0.1:0"}))
	assert.Equal(t, 1500*time.Millisecond, route(r, "local").ConnectTimeout, "changed: the next route has it")
	assert.Equal(t, 7*time.Second, route(r, "resolver").ConnectTimeout, "a resolver's own wins")
	assert.Equal(t, ka.RemoteKeepAlive, route(r, "remote").KeepAlive)
	assert.False(t, route(r, "local").KeepAlive.Enable, "local routes: no keepalive")
	fixed := liveconfig.New(&gateway.Server{ConnectTimeout: time.Second}, ka, liveconfig.Options{FixedConnectTimeout: true})
	assert.Zero(t, route(fixed.Router(next), "local").ConnectTimeout, "a fixed timeout wins: the Server's")
	assert.Equal(t, time.Second, fixed.ConnectTimeout(ka))
	assert.Equal(t, 1500*time.Millisecond, l.ConnectTimeout(ka))
	assert.Equal(t, gateway.DefaultConnectTimeout, l.ConnectTimeout(proxyconfig.Gateway{}))
}

// gatewayTo serves an Applier's listeners, routing every name to backend.
func gatewayTo(t *testing.T, backend string, o liveconfig.Options) (*gateway.Server, *liveconfig.Applier) {
	t.Helper()
	return gatewayOn(t, "", backend, o)
}

// gatewayOn is gatewayTo with the Server on engine e.
func gatewayOn(t *testing.T, e gateway.Engine, backend string, o liveconfig.Options) (*gateway.Server, *liveconfig.Applier) {
	t.Helper()
	s := &gateway.Server{Engine: e}
	l := liveconfig.New(s, proxyconfig.Gateway{}, o)
	s.Router = l.Router(gateway.RouterFunc(func(context.Context, *sni.ClientHello) (gateway.Route, error) {
		return gateway.Route{Name: "backend", Targets: []string{backend}}, nil
	}))
	t.Cleanup(func() {
		s.Close()
		l.Wait()
	})
	return s, l
}

// echoBackend is an echo server on loopback.
func echoBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
	return ln.Addr().String()
}

// roundTrip sends a ClientHello for name and the bytes of what on c and
// reads them back.
func roundTrip(t *testing.T, c net.Conn, what string) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(time.Minute)))
	_, err := c.Write([]byte(what))
	require.NoError(t, err)
	buf := make([]byte, len(what))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err, what)
	assert.Equal(t, what, string(buf))
}

// through opens a connection through addr and checks that it echoes.
func through(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	roundTrip(t, c, string(hellotest.Record(t, "api.example")))
	return c
}

func listens(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// The listeners follow the binds: one added is listened on, one dropped is
// closed while the connections it accepted go on, and Applied hears of
// each change with the addresses in the binds' order (and not of an Apply
// that changes nothing).
func TestListenersFollowTheBinds(t *testing.T) {
	backend := echoBackend(t)
	var heard [][]string
	_, l := gatewayTo(t, backend, liveconfig.Options{Applied: func(_ proxyconfig.Gateway, addrs []string) { heard = append(heard, addrs) }})
	first, second := consultest.FreeAddr(t), consultest.FreeAddr(t)
	ln, err := net.Listen("tcp", first)
	require.NoError(t, err)
	l.Serve([]string{first}, []net.Listener{ln})
	open := through(t, first)

	ctx := context.Background()
	require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{first, second}))
	assert.Equal(t, []string{first, second}, l.Addrs([]string{first, second}))
	through(t, second)

	require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{second}))
	assert.False(t, listens(first), "the dropped bind is closed")
	roundTrip(t, open, "a connection it accepted goes on")
	require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{second}), "the same again")
	assert.Equal(t, [][]string{{first, second}, {second}}, heard)
	got := l.Listening()
	require.Len(t, got, 1)
	assert.Equal(t, second, got[0].String())
	select {
	case err := <-l.Served():
		t.Fatalf("a listener closed by Apply is no Serve error: %v", err)
	default:
	}
}

// When Apply returns, the address of a bind it dropped is free on every
// engine this system has (the loops hold descriptors of the listener of
// their own until they let go of it), so a bind dropped and added back at
// once is listened on again, and one given to another process can be.
func TestADroppedBindIsFreeWhenApplyReturns(t *testing.T) {
	for _, e := range gateway.Engines {
		if gateway.CheckEngine(e) != nil {
			continue
		}
		t.Run(string(e), func(t *testing.T) {
			backend := echoBackend(t)
			_, l := gatewayOn(t, e, backend, liveconfig.Options{})
			kept, dropped := consultest.FreeAddr(t), consultest.FreeAddr(t)
			ln, err := net.Listen("tcp", kept)
			require.NoError(t, err)
			l.Serve([]string{kept}, []net.Listener{ln})
			ctx := context.Background()
			require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{kept, dropped}))
			open := through(t, dropped)
			for range 3 {
				require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{kept}))
				again, err := net.Listen("tcp", dropped)
				require.NoError(t, err, "the dropped bind's address, once Apply returned")
				again.Close()
				require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{kept, dropped}), "the bind added back at once")
				through(t, dropped)
			}
			roundTrip(t, open, "a connection the first listener accepted goes on")
		})
	}
}

// A configuration that cannot be applied leaves the one in force: an
// address that cannot be listened on, one the check refuses, or no bind at
// all; the listeners opened for it are closed again, and its options do
// not reach the routes.
func TestABadConfigurationLeavesTheOneInForce(t *testing.T) {
	backend := echoBackend(t)
	logs := &syncbuf.Buffer{}
	_, l := gatewayTo(t, backend, liveconfig.Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Name: "gw"})
	first, extra := consultest.FreeAddr(t), consultest.FreeAddr(t)
	ctx := context.Background()
	require.NoError(t, l.Apply(ctx, proxyconfig.Gateway{}, []string{first}))
	assert.Contains(t, logs.String(), `msg="gw: configuration applied" listening=`+first)

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	slow := proxyconfig.Gateway{ConnectTimeout: 9 * time.Second}
	err = l.Apply(ctx, slow, []string{first, extra, taken.Addr().String()})
	require.ErrorContains(t, err, "listening on "+taken.Addr().String())
	assert.False(t, listens(extra), "the listener opened for it is closed again")
	assert.Zero(t, l.Options().ConnectTimeout, "the options in force stay")

	refused := errors.New("it would route to itself")
	l.SetCheck(func(a net.Addr) error {
		if a.String() == extra {
			return refused
		}
		return nil
	})
	require.ErrorIs(t, l.Apply(ctx, slow, []string{first, extra}), refused)
	assert.False(t, listens(extra))
	require.ErrorContains(t, l.Apply(ctx, slow, nil), "nothing to listen on")
	assert.Equal(t, []string{first}, addrsOf(l.Listening()))
	through(t, first)
}

func addrsOf(as []net.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	slices.Sort(out)
	return out
}

// A listener whose Serve ends without Apply closing it (the Server's
// Close) is the program's cue to stop: Served says so, once.
func TestServedSaysWhenServingEnds(t *testing.T) {
	s, l := gatewayTo(t, echoBackend(t), liveconfig.Options{})
	require.NoError(t, l.Apply(context.Background(), proxyconfig.Gateway{}, []string{"127.0.0.1:0", "127.0.0.2:0"}))
	s.Close()
	select {
	case err := <-l.Served():
		assert.ErrorIs(t, err, gateway.ErrServerClosed)
	case <-time.After(time.Minute):
		t.Fatal("no end of serving reported")
	}
	l.Wait()
}
