package gateway

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// directionGoroutines counts the goroutines running a spliced direction.
func directionGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	return strings.Count(buf.String(), "gateway.(*direction).run(")
}

// quiet waits until no spliced direction of an earlier test is still
// running (closing is asynchronous), so counts start from zero.
func quiet(t *testing.T) {
	t.Helper()
	waitFor(t, "earlier tests' directions to end", func() bool { return directionGoroutines() == 0 })
}

// openIdle opens n forwarded connections through gw and checks each echoes.
func openIdle(t *testing.T, gw string, n int) []net.Conn {
	t.Helper()
	hello := helloBytes(t, longName)
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		conns = append(conns, c)
		c.Write(hello)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(c, make([]byte, len(hello)))
		require.NoError(t, err)
	}
	return conns
}

// Idle directions park after the grace period and hold no goroutine; data
// wakes them, both ways, and half-close still works from the parked state.
func TestIdleDirectionsParkAndResume(t *testing.T) {
	goroutineEngineOnly(t)
	const n = 50
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	gw := startGateway(t, s)
	quiet(t)
	conns := openIdle(t, gw, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	assert.GreaterOrEqual(t, directionGoroutines(), n, "busy connections have their goroutines")
	waitFor(t, "idle directions to park", func() bool { return directionGoroutines() == 0 })

	// Data wakes a parked connection: the client's direction carries it up,
	// the upstream's brings the echo back.
	for i, c := range conns[:10] {
		msg := []byte("wake up " + strings.Repeat("x", i))
		_, err := c.Write(msg)
		require.NoError(t, err)
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		assert.Equal(t, msg, got)
	}
	// Half-close from the parked state reaches the backend, whose echo loop
	// then ends and closes: the client sees EOF.
	waitFor(t, "parked again", func() bool { return directionGoroutines() == 0 })
	c := conns[20]
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Empty(t, rest)
	waitFor(t, "the finished connection to be forgotten", func() bool { return s.ActiveConns() == n-1 })
}

// The idle timeout still ends a connection whose two directions are parked,
// when no goroutine's read deadline is watching.
func TestIdleTimeoutWhileParked(t *testing.T) {
	b := startBackend(t, echo)
	var counters Counters
	idle := idleGrace + 500*time.Millisecond
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), IdleTimeout: idle, Observer: &counters})
	c := openIdle(t, gw, 1)[0]
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * idle))
	_, err := io.ReadAll(c)
	require.NoError(t, err, "closed by the gateway, not by our deadline")
	waitFor(t, "the report", func() bool { return counters.Snapshot().Forwarded == 1 })
}

// Close and Shutdown finish parked connections: nothing stays asleep.
func TestCloseAndShutdownWithParkedConnections(t *testing.T) {
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	quiet(t)
	conns := openIdle(t, ln.Addr().String(), 10)
	waitFor(t, "idle directions to park", func() bool { return directionGoroutines() == 0 })

	// Shutdown waits; a peer closing a parked connection lets it finish.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, s.Shutdown(ctx), context.DeadlineExceeded)
	conns[0].Close()
	waitFor(t, "the closed one to finish", func() bool { return s.ActiveConns() == 9 })

	// Close ends the parked rest at once.
	require.NoError(t, s.Close())
	for _, c := range conns[1:] {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		assert.NoError(t, err)
		c.Close()
	}
	waitFor(t, "no active connections", func() bool { return s.ActiveConns() == 0 })
	require.NoError(t, s.Shutdown(context.Background()))
}
