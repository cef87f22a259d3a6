package gateway

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// connGoroutines counts the goroutines that carry a connection without
// the event loop: handling it, or running one of its directions.
func connGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	s := buf.String()
	return strings.Count(s, "gateway.(*Server).handle(") + strings.Count(s, "gateway.(*direction).run(") +
		strings.Count(s, "gateway.(*pumps).copy")
}

// With EventLoop, open connections hold no goroutine of their own: the
// loops carry them, and they still forward both ways and report on close.
func TestEventLoopHoldsNoGoroutinePerConnection(t *testing.T) {
	const n = 100
	b := startBackend(t, echo)
	var counters Counters
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), EventLoop: true, Observer: &counters}
	gw := startGateway(t, s)
	quiet(t)
	conns := openIdle(t, gw, n) // each echoed its hello through the gateway
	assert.Equal(t, n, s.ActiveConns())
	assert.Zero(t, connGoroutines(), "goroutines carrying connections, with %d open", n)

	for i, c := range conns { // still forwarding
		msg := []byte{byte(i), 'x'}
		c.Write(msg)
		got := make([]byte, 2)
		_, err := io.ReadFull(c, got)
		require.NoError(t, err)
		require.Equal(t, msg, got)
		c.Close()
	}
	waitFor(t, "every connection reported", func() bool { return counters.Snapshot().Forwarded == n })
	snap := counters.Snapshot()
	assert.Zero(t, snap.Spliced, "short exchanges are copied by the loop")
	hello := int64(len(helloBytes(t, longName)))
	assert.Equal(t, n*(hello+2), snap.BytesUp)
	assert.Equal(t, n*(hello+2), snap.BytesDown)
	waitFor(t, "no active conns", func() bool { return s.ActiveConns() == 0 })
}

// A connection that moves more than the loop's share goes on in the
// Forwarder, which splices, and not a byte is lost or miscounted on the
// way, whichever direction crosses the mark.
func TestEventLoopHandsLongStreamsToTheForwarder(t *testing.T) {
	for _, tc := range []struct {
		name     string
		up, down int
	}{{"upload", 1 << 20, 16}, {"download", 16, 1 << 20}, {"both", 1 << 20, 1 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			hello := helloBytes(t, longName)
			payload := make([]byte, tc.down)
			rand.Read(payload)
			// The backend reads the hello and tc.up bytes, answers with
			// tc.down bytes and closes.
			b := startBackend(t, func(c net.Conn) {
				defer c.Close()
				if _, err := io.CopyN(io.Discard, c, int64(len(hello)+tc.up)); err != nil {
					return
				}
				c.Write(payload)
			})
			var counters Counters
			s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), EventLoop: true, Observer: &counters}
			gw := startGateway(t, s)

			c, err := net.Dial("tcp", gw)
			require.NoError(t, err)
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			go func() {
				c.Write(hello)
				c.Write(make([]byte, tc.up))
			}()
			got, err := io.ReadAll(c)
			require.NoError(t, err)
			require.True(t, bytes.Equal(payload, got), "got %d bytes back, want %d", len(got), len(payload))
			c.Close()
			waitFor(t, "the report", func() bool { return counters.Snapshot().Forwarded == 1 })
			snap := counters.Snapshot()
			assert.Equal(t, int64(1), snap.Spliced, "handed to the Forwarder")
			assert.Equal(t, int64(len(hello)+tc.up), snap.BytesUp)
			assert.Equal(t, int64(tc.down), snap.BytesDown)
		})
	}
}
