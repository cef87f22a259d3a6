package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const name = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"

// startTestLoop runs one loop routing name to an echo server, and returns
// the loop's address.
func startTestLoop(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, nil)
	routes := routeFlag{}
	require.NoError(t, routes.Set(name+"="+ln.Addr().String()))
	done := make(chan error, 1)
	l, err := startLoop(netip.MustParseAddrPort("127.0.0.1:0"), routes, done)
	require.NoError(t, err, "io_uring must be available on the machines this project builds on")
	t.Cleanup(func() {
		l.close()
		select {
		case err := <-done:
			assert.True(t, errors.Is(err, errClosed), "run returns errClosed once the loop is closed: %v", err)
		case <-time.After(10 * time.Second):
			t.Error("run did not return after close")
		}
	})
	return l.addr().String()
}

// A routed connection gets its hello and 8 MiB back through the echo
// server, whole and in order, and the half-close after them.
func TestForwardsBothWaysAndHalfCloses(t *testing.T) {
	addr := startTestLoop(t)
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

// Many connections at once, each with a hello that arrives in pieces,
// all get their bytes back: the buffer ring runs dry and refills.
func TestManyConnectionsAndSplitHellos(t *testing.T) {
	addr := startTestLoop(t)
	hello := hellotest.Record(t, name)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			body := make([]byte, 256<<10)
			rand.Read(body)
			go func() {
				if i%2 == 0 { // the hello in three pieces
					c.Write(hello[:3])
					time.Sleep(time.Millisecond)
					c.Write(hello[3:100])
					time.Sleep(time.Millisecond)
					c.Write(hello[100:])
				} else {
					c.Write(hello)
				}
				c.Write(body)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(append(append([]byte(nil), hello...), body...), got) {
				err = errors.New("the bytes that came back differ")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A name with no route, or bytes that are not TLS, get the connection
// closed with nothing forwarded.
func TestClosesWhatItCannotRoute(t *testing.T) {
	addr := startTestLoop(t)
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

// An upstream that refuses the connection gets the client closed.
func TestClosesWhenTheUpstreamRefuses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close()
	routes := routeFlag{}
	require.NoError(t, routes.Set(name+"="+dead))
	done := make(chan error, 1)
	l, err := startLoop(netip.MustParseAddrPort("127.0.0.1:0"), routes, done)
	require.NoError(t, err)
	defer func() { l.close(); <-done }()
	c, err := net.Dial("tcp", l.addr().String())
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = c.Write(hellotest.Record(t, name))
	require.NoError(t, err)
	got, _ := io.ReadAll(c)
	assert.Empty(t, got)
}
