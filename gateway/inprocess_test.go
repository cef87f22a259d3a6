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

// A Route with Serve takes the connection in this process, no dial: Serve
// reads the ClientHello again first, the connection counts as open until
// Serve returns, and observers see it forwarded to TargetInProcess with
// the bytes each way.
func TestRouteServeTakesTheConnection(t *testing.T) {
	records := &recorder{} // counts too
	counters := &records.Counters
	served := make(chan struct{}, 1)
	s := &Server{
		Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
			return Route{Name: "terminated here", Kind: "test", Serve: func(c net.Conn) {
				defer func() { served <- struct{}{} }()
				defer c.Close()
				io.Copy(c, c)
			}}, nil
		}),
		Observer: records,
	}
	gw := startGateway(t, s)
	hello := helloBytes(t, longName)
	c := echoed(t, gw, hello) // the hello comes back: Serve read it first
	_, err := c.Write([]byte("more"))
	require.NoError(t, err)
	_, err = io.ReadFull(c, make([]byte, 4))
	require.NoError(t, err)
	assert.Equal(t, 1, s.ActiveConns(), "open while Serve runs")
	c.Close()
	<-served
	waitFor(t, "the connection to be forgotten", func() bool { return s.ActiveConns() == 0 })
	snap := counters.Snapshot()
	assert.Equal(t, int64(1), snap.Forwarded)
	assert.Equal(t, int64(len(hello)+4), snap.BytesUp)
	assert.Equal(t, int64(len(hello)+4), snap.BytesDown)
	assert.Zero(t, snap.DialFailures)
	recs := records.all()
	require.Len(t, recs, 1)
	assert.Equal(t, TargetInProcess, recs[0].Target)
	assert.Equal(t, OutcomeForwarded, recs[0].Outcome)
	assert.Equal(t, "terminated here", recs[0].Route)
}

// Close closes a connection under its Serve, which then returns.
func TestCloseEndsRouteServe(t *testing.T) {
	reading := make(chan struct{})
	returned := make(chan error, 1)
	s := &Server{Router: RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
		return Route{Name: "held", Serve: func(c net.Conn) {
			buf := make([]byte, 64<<10)
			_, err := io.ReadAtLeast(c, buf, 1) // the hello
			close(reading)
			for err == nil {
				_, err = c.Read(buf)
			}
			returned <- err
		}}, nil
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write(helloBytes(t, longName))
	require.NoError(t, err)
	<-reading
	require.NoError(t, s.Close())
	select {
	case err := <-returned:
		assert.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still reading after Close")
	}
	waitFor(t, "no open connection", func() bool { return s.ActiveConns() == 0 })
}
