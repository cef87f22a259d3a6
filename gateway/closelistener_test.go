package gateway

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Closing one of a Server's listeners stops its accepting on every engine:
// Serve on it returns net.ErrClosed once no engine holds the socket, so
// its address can be listened on again, a connection it accepted before keeps forwarding, and the
// Server's other listener serves on. (A program that drops a bind address
// on reload closes its listener this way; the io_uring loops accept on a
// descriptor of their own, which the closed listener does not close.)
func TestClosingOneListenerStopsItsAccepts(t *testing.T) {
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	kept := startGateway(t, s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dropped := ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	hello := helloBytes(t, longName)
	open := echoed(t, dropped, hello)
	defer open.Close()

	require.NoError(t, ln.Close())
	select {
	case err := <-served:
		assert.ErrorIs(t, err, net.ErrClosed, "Serve on the closed listener")
	case <-time.After(time.Minute):
		t.Fatal("Serve still running a minute after its listener closed")
	}
	// When Serve has returned, the address is free: no engine holds a
	// descriptor of the socket any more.
	again, err := net.Listen("tcp", dropped)
	require.NoError(t, err, "listening again on the closed listener's address")
	again.Close()
	_, err = open.Write([]byte("still here"))
	require.NoError(t, err)
	buf := make([]byte, len("still here"))
	open.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = io.ReadFull(open, buf)
	require.NoError(t, err, "a connection the closed listener accepted")
	assert.Equal(t, "still here", string(buf))
	echoed(t, kept, hello).Close()
}
