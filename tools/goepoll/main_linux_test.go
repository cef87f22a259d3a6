package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const name = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"

// startLoop runs one loop routing name to an echo server, and returns the
// loop's address.
func startLoop(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
	routes := routeFlag{}
	require.NoError(t, routes.Set(name+"="+ln.Addr().String()))
	l, err := newLoop(netip.MustParseAddrPort("127.0.0.1:0"), routes)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- l.run() }()
	t.Cleanup(func() {
		l.close()
		select {
		case err := <-done:
			assert.Error(t, err, "run returns once the loop is closed")
		case <-time.After(10 * time.Second):
			t.Error("run did not return after close")
		}
	})
	return l.addr().String()
}

// A routed connection gets its hello and 8 MiB back through the echo
// server, whole and in order, and the half-close after them.
func TestForwardsBothWaysAndHalfCloses(t *testing.T) {
	addr := startLoop(t)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	sent := append(hellotest.Record(t, name), make([]byte, 8<<20)...)
	rand.Read(sent[len(sent)-8<<20:])
	go func() {
		c.Write(sent)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(sent, got), "sent %d bytes, got %d back", len(sent), len(got))
}

// A name with no route, or bytes that are not TLS, get the connection
// closed with nothing forwarded.
func TestClosesWhatItCannotRoute(t *testing.T) {
	addr := startLoop(t)
	for _, first := range [][]byte{
		hellotest.Record(t, "web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
	} {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = c.Write(first)
		require.NoError(t, err)
		got, _ := io.ReadAll(c) // EOF or a reset: either way closed
		assert.Empty(t, got)
		c.Close()
	}
}
