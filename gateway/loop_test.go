package gateway

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A route that leads back to the gateway, by its address or through a name,
// ends at the second connection instead of taking one after another until
// the process runs out of descriptors.
func TestRouteToItselfEndsAtOnce(t *testing.T) {
	for _, via := range []string{"address", "name"} {
		t.Run(via, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			self := ln.Addr().String()
			if via == "name" {
				self = "localhost:" + strings.TrimPrefix(self, "127.0.0.1:")
			}
			var counters Counters
			var log syncbuf.Buffer
			s := &Server{Router: tableFor(t, map[string][]string{longName: {self}}), Observer: &counters, Logger: newTextLogger(&log), Engine: engineUnderTest}
			done := make(chan error, 1)
			go func() { done <- s.Serve(ln) }()
			t.Cleanup(func() { s.Close(); <-done })

			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write(helloBytes(t, longName))
			require.NoError(t, err)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err = io.ReadAll(c)
			require.NoError(t, err, "the gateway ends the client's stream")
			c.Close()

			waitFor(t, "both connections to end", func() bool { return s.ActiveConns() == 0 })
			snap := counters.Snapshot()
			assert.EqualValues(t, 2, snap.Accepted, "the client's connection and the gateway's own, no more")
			assert.EqualValues(t, 1, snap.Rejected[ReasonLoop])
			assert.Contains(t, log.String(), "a route leads back to this gateway")
		})
	}
}

// Another client on the same host is never mistaken for the gateway's own
// connection, even from the same local port as an upstream connection.
func TestOwnConnectionMatchesBothEnds(t *testing.T) {
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	gw := startGateway(t, s)
	up, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer up.Close()
	hello := helloBytes(t, longName)
	up.Write(hello)
	_, err = io.ReadFull(up, make([]byte, len(hello)))
	require.NoError(t, err)

	var pairs []tcpPair
	s.mu.Lock()
	for k := range s.dialed {
		pairs = append(pairs, k)
	}
	s.mu.Unlock()
	require.Len(t, pairs, 1)
	p := pairs[0]
	assert.Equal(t, b.addr(), p.to.String())
	gwAddr := up.RemoteAddr().(*net.TCPAddr)
	assert.True(t, s.ownConnection(net.TCPAddrFromAddrPort(p.from), net.TCPAddrFromAddrPort(p.to)),
		"the far end of the upstream connection")
	assert.False(t, s.ownConnection(net.TCPAddrFromAddrPort(p.from), gwAddr),
		"a client from the same port to the gateway itself")
}
