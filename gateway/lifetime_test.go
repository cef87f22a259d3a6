package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// endErrs records each forwarded connection's Stats.Err.
type endErrs struct {
	Counters
	mu   sync.Mutex
	errs []error
}

func (e *endErrs) Forwarded(route, target string, s Stats) {
	e.Counters.Forwarded(route, target, s)
	e.mu.Lock()
	e.errs = append(e.errs, s.Err)
	e.mu.Unlock()
}

func (e *endErrs) all() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.errs...)
}

// A busy connection is closed at the Server's MaxConnectionLifetime, on
// every path: short exchanges the engine forwards itself, a connection
// past 64 KiB (the Forwarder: splice or copy), and one served in process.
func TestMaxConnectionLifetimeEndsBusyConnections(t *testing.T) {
	forwardingPaths(t, func(t *testing.T, dial dialFunc, _ bool) {
		for _, bulk := range []int{0, 256 << 10} {
			name := "short exchanges"
			if bulk > 0 {
				name = "past 64 KiB"
			}
			t.Run(name, func(t *testing.T) {
				b := startBackend(t, echo)
				var obs endErrs
				gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}),
					MaxConnectionLifetime: 300 * time.Millisecond, Observer: &obs, Dial: dial})
				c, err := net.Dial("tcp", gw)
				require.NoError(t, err)
				defer c.Close()
				hello := helloBytes(t, longName)
				c.Write(hello)
				_, err = io.ReadFull(c, make([]byte, len(hello)))
				require.NoError(t, err)
				if bulk > 0 {
					go c.Write(make([]byte, bulk))
					_, err = io.ReadFull(c, make([]byte, bulk))
					require.NoError(t, err)
				}
				// Bytes move every 20 ms, so the idle timeout never ends
				// it: the lifetime does.
				ended := make(chan error, 1)
				go func() {
					buf := make([]byte, 4)
					for {
						if _, err := c.Write([]byte("tick")); err != nil {
							ended <- err
							return
						}
						if _, err := io.ReadFull(c, buf); err != nil {
							ended <- err
							return
						}
						time.Sleep(20 * time.Millisecond)
					}
				}()
				select {
				case <-ended:
				case <-time.After(30 * time.Second):
					t.Fatal("the connection was still open 30 s after its 300 ms lifetime")
				}
				waitFor(t, "the report", func() bool { return len(obs.all()) == 1 })
				assert.ErrorIs(t, obs.all()[0], ErrMaxConnectionLifetime)
			})
		}
	})
}

func TestMaxConnectionLifetimeEndsInProcessConnections(t *testing.T) {
	served := make(chan error, 1)
	r := RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
		return Route{Name: "held", Serve: func(c net.Conn) {
			_, err := io.Copy(io.Discard, c) // until the lifetime closes it
			served <- err
		}}, nil
	})
	gw := startGateway(t, &Server{Router: r, MaxConnectionLifetime: 200 * time.Millisecond})
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	c.Write(helloBytes(t, longName))
	select {
	case err := <-served:
		assert.True(t, err == nil || errors.Is(err, net.ErrClosed), "ended by a close: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the in-process connection was still open 30 s after its 200 ms lifetime")
	}
}

// Without MaxConnectionLifetime a busy connection goes on.
func TestNoMaxConnectionLifetimeByDefault(t *testing.T) {
	b := startBackend(t, echo)
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})})
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	hello := helloBytes(t, longName)
	c.Write(hello)
	_, err = io.ReadFull(c, make([]byte, len(hello)))
	require.NoError(t, err)
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Write([]byte("tick"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, make([]byte, 4))
		require.NoError(t, err, "the connection still echoes")
	}
}
