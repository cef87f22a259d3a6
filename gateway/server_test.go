package gateway

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gateway/internal/goroutine"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A real TLS client reaches a real TLS server through the gateway, which has
// no certificate or key: the handshake completes with the server's own
// certificate, end to end.
func TestTLSEndToEndGoClient(t *testing.T) {
	cert, pool := selfSigned(t, longName)
	b := startBackend(t, tlsEcho(cert))
	var counters Counters
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Observer: &counters})

	c, err := tls.Dial("tcp", gw, &tls.Config{ServerName: longName, RootCAs: pool})
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, longName, c.ConnectionState().PeerCertificates[0].Subject.CommonName)
	_, err = c.Write([]byte("hello through the gateway"))
	require.NoError(t, err)
	buf := make([]byte, 25)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "hello through the gateway", string(buf))
	c.Close()
	waitFor(t, "the connection to be reported", func() bool { return counters.Snapshot().Forwarded == 1 })
	snap := counters.Snapshot()
	if !eventLoopUnderTest { // the event loop copies a short exchange itself
		assert.Equal(t, int64(1), snap.Spliced)
	}
	assert.Greater(t, snap.BytesUp, int64(25))
}

func TestTLSEndToEndOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("SKIPPED LOUDLY: openssl is not installed (apt-get install openssl); the Go client test covers the same path")
	}
	cert, _ := selfSigned(t, longName)
	b := startBackend(t, tlsEcho(cert))
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})})

	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", gw, "-servername", longName, "-quiet", "-no_ign_eof")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	_, err = io.WriteString(stdin, "ping from openssl\n")
	require.NoError(t, err)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "openssl: %s", stderr.String())
	assert.Equal(t, "ping from openssl\n", line, "echoed by the backend through the TLS session")
	stdin.Close()
	require.NoError(t, cmd.Wait(), stderr.String())
	assert.Contains(t, stderr.String(), "CN = "+longName, "openssl verified the backend's own certificate chain")
}

// Large random streams arrive intact both ways at once, over each path.
func TestBulkIntegrityBothWays(t *testing.T) {
	forwardingPaths(t, func(t *testing.T, dial dialFunc, spliced bool) {
		const size = 32 << 20
		up := make([]byte, size)
		down := make([]byte, size)
		rand.Read(up)
		rand.Read(down)
		gotUp := make(chan [32]byte, 1)
		b := startBackend(t, func(c net.Conn) {
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := sha256.New()
				io.Copy(h, c)
				var sum [32]byte
				copy(sum[:], h.Sum(nil))
				gotUp <- sum
			}()
			c.Write(down)
			c.(*net.TCPConn).CloseWrite()
			wg.Wait()
		})
		var counters Counters
		gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Observer: &counters, Dial: dial})

		hello := helloBytes(t, longName)
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		go func() {
			c.Write(hello)
			c.Write(up)
			c.(*net.TCPConn).CloseWrite()
		}()
		h := sha256.New()
		n, err := io.Copy(h, c)
		require.NoError(t, err)
		assert.Equal(t, int64(size), n)
		assert.Equal(t, sha256.Sum256(down), [32]byte(h.Sum(nil)), "upstream to client")
		want := sha256.New()
		want.Write(hello)
		want.Write(up)
		assert.Equal(t, [32]byte(want.Sum(nil)), <-gotUp, "client to upstream, hello first")
		waitFor(t, "stats", func() bool { return counters.Snapshot().Forwarded == 1 })
		s := counters.Snapshot()
		assert.Equal(t, int64(size+len(hello)), s.BytesUp)
		assert.Equal(t, int64(size), s.BytesDown)
		assert.Equal(t, spliced, s.Spliced == 1, "the path taken")
	})
}

// Each side's half-close reaches the other, and the opposite direction keeps
// working after it.
func TestHalfClose(t *testing.T) {
	forwardingPaths(t, func(t *testing.T, dial dialFunc, _ bool) { halfClose(t, dial) })
}

func halfClose(t *testing.T, dial dialFunc) {
	t.Run("client closes writing first", func(t *testing.T) {
		b := startBackend(t, func(c net.Conn) {
			got, _ := io.ReadAll(c) // ends only if the client's FIN was forwarded
			c.Write([]byte("got " + string(got[len(got)-4:])))
		})
		gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Dial: dial})
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		c.Write(helloBytes(t, longName))
		c.Write([]byte("done"))
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		reply, err := io.ReadAll(c)
		require.NoError(t, err)
		assert.Equal(t, "got done", string(reply))
	})
	t.Run("upstream closes writing first", func(t *testing.T) {
		b := startBackend(t, func(c net.Conn) {
			c.Write([]byte("bye"))
			c.(*net.TCPConn).CloseWrite()
			io.ReadAll(c)
		})
		gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Dial: dial})
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		c.Write(helloBytes(t, longName))
		got, err := io.ReadAll(c) // EOF arrives while our side is still open
		require.NoError(t, err)
		assert.Equal(t, "bye", string(got))
		_, err = c.Write([]byte("still writing"))
		assert.NoError(t, err, "the client's direction stays open")
	})
}

// Bad input is closed without any dial, and counted with its reason.
func TestRejectsWithoutDialling(t *testing.T) {
	b := startBackend(t, echo)
	var counters Counters
	gw := startGateway(t, &Server{
		Router:       tableFor(t, map[string][]string{longName: {b.addr()}}),
		Observer:     &counters,
		PeekTimeout:  200 * time.Millisecond,
		MaxHelloSize: 4096,
	})
	huge := append([]byte{22, 3, 1, 0x40, 0, 1, 0, 0x80, 0}, make([]byte, 100)...)
	cases := []struct {
		name   string
		send   func(c net.Conn)
		reason string
	}{
		{"plain HTTP", func(c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }, ReasonNotTLS},
		{"unknown name", func(c net.Conn) { c.Write(helloBytes(t, "web.default.dc1.internal.other.consul")) }, ReasonNoRoute},
		{"no name", func(c net.Conn) { c.Write(helloBytes(t, "")) }, ReasonNoRoute},
		{"oversized hello", func(c net.Conn) { c.Write(huge) }, ReasonTooLarge},
		{"malformed hello", func(c net.Conn) { c.Write([]byte{22, 3, 1, 0, 5, 2, 0, 0, 1, 0}) }, ReasonMalformed},
		{"silent client", func(c net.Conn) {}, ReasonPeekTimeout},
		{"a byte at a time, too slowly", func(c net.Conn) {
			for _, x := range helloBytes(t, longName)[:20] {
				if _, err := c.Write([]byte{x}); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}, ReasonPeekTimeout},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counters.Snapshot().Rejected[tc.reason]
			c, err := net.Dial("tcp", gw)
			require.NoError(t, err)
			defer c.Close()
			tc.send(c)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadAll(c)
			assert.False(t, errors.Is(err, context.DeadlineExceeded), "the gateway must close the connection")
			waitFor(t, "the rejection", func() bool { return counters.Snapshot().RejectedTotal() == int64(i+1) })
			assert.Equal(t, before+1, counters.Snapshot().Rejected[tc.reason], "%v", counters.Snapshot().Rejected)
		})
	}
	assert.Zero(t, b.accepted.Load(), "nothing may be dialled for a rejected connection")
}

func TestDialFailover(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	b := startBackend(t, echo)
	var counters Counters
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{
		longName:     {deadAddr, b.addr()},
		"all.dead.x": {deadAddr, deadAddr},
	}), Observer: &counters})

	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	hello := helloBytes(t, longName)
	c.Write(hello)
	buf := make([]byte, len(hello))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, hello, buf, "echoed by the second target")
	c.Close()
	assert.Equal(t, int64(1), counters.Snapshot().DialFailures)

	c, err = net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	c.Write(helloBytes(t, "all.dead.x"))
	_, err = io.ReadAll(c)
	require.NoError(t, err)
	waitFor(t, "dial-failed", func() bool { return counters.Snapshot().Rejected[ReasonDialFailed] == 1 })
	assert.Equal(t, int64(3), counters.Snapshot().DialFailures)
}

func TestMaxConnsBacksOffAccepting(t *testing.T) {
	b := startBackend(t, echo)
	var counters Counters
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), MaxConns: 2, Observer: &counters}
	gw := startGateway(t, s)
	assert.Equal(t, 2, s.ConnLimit(), "MaxConns is below this process's descriptor budget")
	hello := helloBytes(t, longName)
	open := func() net.Conn {
		c, err := net.Dial("tcp", gw) // completes in the kernel backlog even when not accepted
		require.NoError(t, err)
		c.Write(hello)
		return c
	}
	roundTrip := func(c net.Conn) error {
		buf := make([]byte, len(hello))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadFull(c, buf)
		return err
	}
	a, b2 := open(), open()
	require.NoError(t, roundTrip(a))
	require.NoError(t, roundTrip(b2))
	third := open()
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, int64(2), counters.Snapshot().Accepted, "the third waits in the backlog")
	assert.Equal(t, 2, b.Load2())
	a.Close()
	require.NoError(t, roundTrip(third), "served once a slot frees")
	snap := counters.Snapshot()
	assert.Positive(t, snap.HeldBackMaxConns, "the wait was reported to the LimitObserver")
	assert.Zero(t, snap.HeldBackOpenFiles)
	b2.Close()
	third.Close()
}

func TestShutdownDrainsThenClose(t *testing.T) {
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	hello := helloBytes(t, longName)
	c.Write(hello)
	io.ReadFull(c, make([]byte, len(hello)))
	waitFor(t, "one active conn", func() bool { return s.ActiveConns() == 1 })

	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, s.Shutdown(ctx), context.DeadlineExceeded, "the open connection holds Shutdown")
	assert.ErrorIs(t, <-served, ErrServerClosed)
	_, err = net.Dial("tcp", ln.Addr().String())
	assert.Error(t, err, "no longer accepting")
	_, err = c.Write([]byte("x"))
	assert.NoError(t, err, "the open connection still works")

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(bg) }()
	c.Close()
	require.NoError(t, <-done, "Shutdown returns once the last connection ends")
	assert.ErrorIs(t, s.Serve(ln), ErrServerClosed)
}

func TestCloseEndsConnections(t *testing.T) {
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	gw := startGateway(t, s)
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	hello := helloBytes(t, longName)
	c.Write(hello)
	io.ReadFull(c, make([]byte, len(hello)))
	require.NoError(t, s.Close())
	_, err = io.ReadAll(c)
	require.NoError(t, err)
	waitFor(t, "no active conns", func() bool { return s.ActiveConns() == 0 })
}

// A goroutine that handled a connection waits for the next one instead of
// ending (its stack has grown to what a connection needs), no more than
// goroutine.MaxIdleWorkers of them wait at once, and none is left after Close.
func TestWorkersAreReusedAndEndOnClose(t *testing.T) {
	goroutineEngineOnly(t)
	b := startBackend(t, echo)
	s := &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})}
	gw := startGateway(t, s)
	hello := helloBytes(t, longName)
	for range 20 { // one after another: one worker carries them all
		echoed(t, gw, hello).Close()
		waitFor(t, "the connection ends", func() bool { return s.ActiveConns() == 0 })
		waitFor(t, "its worker waits for the next", func() bool { return s.goroutines.IdleWorkers() >= 1 })
	}
	// One, or two if a worker was preempted between counting itself idle
	// and waiting; twenty if none was reused.
	assert.LessOrEqual(t, s.goroutines.IdleWorkers(), 2, "workers waiting after 20 connections one after another")
	var conns []net.Conn
	for range goroutine.MaxIdleWorkers + 20 { // at once: a worker each
		conns = append(conns, echoed(t, gw, hello))
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "the connections end", func() bool { return s.ActiveConns() == 0 })
	assert.LessOrEqual(t, s.goroutines.IdleWorkers(), goroutine.MaxIdleWorkers)
	require.NoError(t, s.Close())
	waitFor(t, "no worker left", func() bool { return s.goroutines.IdleWorkers() == 0 })
}

func TestIdleTimeoutCountsBothDirections(t *testing.T) {
	forwardingPaths(t, func(t *testing.T, dial dialFunc, _ bool) { idleTimeoutBothWays(t, dial) })
}

func idleTimeoutBothWays(t *testing.T, dial dialFunc) {
	t.Run("idle both ways: closed", func(t *testing.T) {
		b := startBackend(t, echo)
		var counters Counters
		gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), IdleTimeout: 150 * time.Millisecond, Observer: &counters, Dial: dial})
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		hello := helloBytes(t, longName)
		c.Write(hello)
		io.ReadFull(c, make([]byte, len(hello)))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(c)
		require.NoError(t, err, "closed by the gateway")
	})
	t.Run("traffic one way keeps it open", func(t *testing.T) {
		// The backend only receives; the client only sends. The upstream-to-
		// client direction is idle throughout, yet must not time out.
		got := make(chan int, 1)
		b := startBackend(t, func(c net.Conn) { n, _ := io.Copy(io.Discard, c); got <- int(n) })
		// Ticks every 100 ms against a 600 ms timeout: a generous margin for a
		// loaded machine, and still four idle periods in all.
		gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), IdleTimeout: 600 * time.Millisecond, Dial: dial})
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		hello := helloBytes(t, longName)
		c.Write(hello)
		for range 24 {
			time.Sleep(100 * time.Millisecond)
			_, err := c.Write([]byte("tick"))
			require.NoError(t, err)
		}
		c.(*net.TCPConn).CloseWrite()
		assert.Equal(t, len(hello)+24*4, <-got, "every tick arrived: the connection outlived 4 idle timeouts")
	})
}

// A rejected connection's log line names only its own server name, and a
// connection that sends nothing (a health check) is counted but logged at
// Debug, not Info.
func TestRejectionLogsAreTheConnectionsOwn(t *testing.T) {
	var info, debug syncbuf.Buffer
	var counters Counters
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{"a.b": {"127.0.0.1:1"}}), Logger: newTextLogger(&info), Observer: &counters})
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write(helloBytes(t, "first.example"))
	io.ReadAll(c)
	c.Close()
	waitFor(t, "the first rejection", func() bool { return strings.Contains(info.String(), "first.example") })

	for _, send := range [][]byte{nil, []byte("GET / HTTP/1.0\r\n\r\n")} {
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		c.Write(send)
		c.(*net.TCPConn).CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
	waitFor(t, "both rejections", func() bool { return counters.Snapshot().RejectedTotal() == 3 })
	waitFor(t, "the not-tls line", func() bool { return strings.Contains(info.String(), "reason=not-tls") })
	lines := strings.Split(strings.TrimSpace(info.String()), "\n")
	require.Len(t, lines, 2, "the silent connection is not an Info line:\n%s", info.String())
	assert.Contains(t, lines[1], `server_name=""`, "a connection whose hello was not parsed has no name, not a pooled earlier one")
	assert.Equal(t, int64(1), counters.Snapshot().Rejected[ReasonClosed], "the silent connection is still counted")

	gw2 := startGateway(t, &Server{Router: tableFor(t, map[string][]string{"a.b": {"127.0.0.1:1"}}),
		Logger: slog.New(slog.NewTextHandler(&debug, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	c, err = net.Dial("tcp", gw2)
	require.NoError(t, err)
	c.Close()
	waitFor(t, "the debug line", func() bool { return strings.Contains(debug.String(), "reason=closed-before-hello") })
	assert.Contains(t, debug.String(), "level=DEBUG")
}

func TestLogsOneLinePerRejection(t *testing.T) {
	var buf syncbuf.Buffer
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{"a.b": {"127.0.0.1:1"}}), Logger: newTextLogger(&buf)})
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write(helloBytes(t, "unknown.example"))
	io.ReadAll(c)
	c.Close()
	waitFor(t, "the log line", func() bool { return strings.Contains(buf.String(), "rejected") })
	line := buf.String()
	assert.Equal(t, 1, strings.Count(line, "\n"))
	assert.Contains(t, line, "reason=no-route")
	assert.Contains(t, line, "server_name=unknown.example")
}
