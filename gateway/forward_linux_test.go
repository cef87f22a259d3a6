package gateway

import (
	"bufio"
	"crypto/rand"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// procIO returns this process's rchar and wchar: bytes that went through
// read(2)- and write(2)-family calls. splice(2) does not count there.
func procIO(t *testing.T) (rchar, wchar int64) {
	t.Helper()
	f, err := os.Open("/proc/self/io")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "rchar":
			rchar = n
		case "wchar":
			wchar = n
		}
	}
	return rchar, wchar
}

// transfer sends size bytes from a client through Forward to a backend that
// reads them, and returns the Forwarder's stats.
func transfer(t *testing.T, size int, wrap bool) Stats {
	payload := make([]byte, size)
	rand.Read(payload)
	got := make(chan int64, 1)
	b := startBackend(t, func(c net.Conn) { n, _ := io.Copy(io.Discard, c); got <- n })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	stats := make(chan Stats, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", b.addr())
		if err != nil {
			c.Close()
			return
		}
		if wrap {
			c, up = wrapped{c}, wrapped{up}
		}
		var f Forwarder
		stats <- f.Forward(c, up, nil)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_, err = c.Write(payload)
	require.NoError(t, err)
	c.(*net.TCPConn).CloseWrite()
	require.Equal(t, int64(size), <-got)
	c.Close()
	return <-stats
}

// The Forwarder moves bytes with splice(2): the kernel's own accounting shows
// no user-space read of the payload by the gateway. The same transfer forced
// through the copying path shows one, so this test can fail.
func TestZeroCopyPathIsTaken(t *testing.T) {
	const size = 64 << 20
	r0, _ := procIO(t)
	s := transfer(t, size, false)
	r1, _ := procIO(t)
	assert.True(t, s.Spliced)
	assert.Equal(t, int64(size), s.ClientToUpstream)
	spliced := r1 - r0 // the backend's reads only

	s = transfer(t, size, true)
	r2, _ := procIO(t)
	assert.False(t, s.Spliced)
	copied := r2 - r1 // the backend's reads and the gateway's

	t.Logf("bytes read through read(2): spliced %d MiB, copied %d MiB, for %d MiB forwarded", spliced>>20, copied>>20, size>>20)
	assert.Less(t, spliced, int64(size)*5/4, "the spliced path read the payload in user space")
	assert.Greater(t, copied, int64(size)*7/4, "control: the copying path must show its reads")
}

// A direction copies its first copyFirst bytes through user space, where a
// short exchange costs less than a splice through a pipe, and splices the
// rest: a transfer of one TLS record shows the gateway's read of it beside
// the backend's, and the 64 MiB one above shows no more than a quarter extra.
func TestShortExchangesAreCopiedFirst(t *testing.T) {
	const size = 16 << 10 // a TLS record
	r0, _ := procIO(t)
	s := transfer(t, size, false)
	r1, _ := procIO(t)
	assert.True(t, s.Spliced, "a bare TCP connection takes the splice path, which copies first")
	assert.Equal(t, int64(size), s.ClientToUpstream)
	assert.GreaterOrEqual(t, r1-r0, int64(2*size), "the gateway's read(2) of the short transfer, beside the backend's")
}

func countFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(entries)
}

// An idle forwarded connection holds its two sockets and no pipe: io.Copy's
// splice would hold two pipe pairs (four more descriptors) per connection.
func TestIdleConnectionsHoldNoPipes(t *testing.T) {
	const n = 200
	b := startBackend(t, echo)
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}})})
	hello := helloBytes(t, longName)
	before := countFDs(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		conns = append(conns, c)
		c.Write(hello)
		_, err = io.ReadFull(c, make([]byte, len(hello))) // data moved: the pumps ran
		require.NoError(t, err)
	}
	pipes.mu.Lock()
	pooled := len(pipes.free)
	pipes.mu.Unlock()
	delta := countFDs(t) - before - 2*pooled
	perConn := float64(delta) / n
	t.Logf("%d descriptors for %d idle forwarded connections (client, gateway x2, backend each) besides %d pooled pipes", delta, n, pooled)
	assert.LessOrEqual(t, perConn, 4.05, "4 sockets per connection in this process; pipes would add 4 more")
	assert.LessOrEqual(t, pooled, maxIdlePipes)
}
