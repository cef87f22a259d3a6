package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// connGoroutines counts the goroutines that carry a connection without
// the event loop: handling it, or running one of its directions.
func connGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	s := buf.String()
	return strings.Count(s, "goroutine.(*Engine).handle(") + strings.Count(s, "gateway.(*direction).run(") +
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

// When the server stops, the loops take the listener out of their epoll
// sets at once, even while another descriptor of it stays open (a binary
// upgrade hands it to a new process), so that they no longer take the
// wake-ups of its new connections; an open connection keeps the loops
// running meanwhile, and keeps working.
func TestEventLoopsLetGoOfTheListenerOnShutdown(t *testing.T) {
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), EventLoop: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	rc, err := ln.(*net.TCPListener).SyscallConn()
	require.NoError(t, err)
	other := -1 // the new process's descriptor of the listener
	require.NoError(t, rc.Control(func(fd uintptr) { other, err = unix.Dup(int(fd)) }))
	require.NoError(t, err)
	defer unix.Close(other)
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(other, &st))
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	defer s.Close()

	c := echoed(t, ln.Addr().String(), helloBytes(t, longName))
	defer c.Close()
	waitFor(t, "the loops' epoll sets to hold the listener", func() bool { return epollSetsHolding(t, st.Ino) > 0 })
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	waitFor(t, "no epoll set to hold the listener", func() bool { return epollSetsHolding(t, st.Ino) == 0 })
	require.ErrorIs(t, <-errc, ErrServerClosed)

	_, err = c.Write([]byte("still"))
	require.NoError(t, err)
	got := make([]byte, 5)
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	assert.Equal(t, "still", string(got))
	c.Close()
	require.NoError(t, <-shut)
}

// epollSetsHolding counts the epoll sets of this process that hold the
// socket with inode ino, from /proc/self/fdinfo.
func epollSetsHolding(t *testing.T, ino uint64) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	want := fmt.Sprintf(" ino:%x ", ino)
	n := 0
	for _, fd := range fds {
		if link, err := os.Readlink("/proc/self/fd/" + fd.Name()); err != nil || link != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + fd.Name())
		if err == nil && strings.Contains(string(info), want) {
			n++
		}
	}
	return n
}
