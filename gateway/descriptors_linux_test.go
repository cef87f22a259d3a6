//go:build unix

package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests run the gateway in a child process (the test binary itself,
// told so by the environment) so that its open-file limit is its own.
const (
	childBackendEnv = "MESHGATE_FD_CHILD_BACKEND" // the echo backend's address
	childLimitEnv   = "MESHGATE_FD_CHILD_NOFILE"  // the child's soft RLIMIT_NOFILE
	childHogEnv     = "MESHGATE_FD_CHILD_HOG"     // "1": take every free descriptor until stdin says "free"
	childPeekEnv    = "MESHGATE_FD_CHILD_PEEK"    // the child's PeekTimeout, when set
)

func init() {
	if os.Getenv(childBackendEnv) != "" {
		descriptorChild()
	}
}

// descriptorChild serves a Table to the backend under the limit it is told,
// prints "LISTEN <addr>" and serves until its stdin closes. Hogging, it
// first takes every free descriptor, and frees them when a line arrives.
func descriptorChild() {
	fail := func(err error) { fmt.Fprintln(os.Stderr, "child:", err); os.Exit(2) }
	nofile, err := strconv.Atoi(os.Getenv(childLimitEnv))
	if err != nil {
		fail(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	lim.Cur = uint64(nofile)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	tab, err := NewTable(map[string][]string{longName: {os.Getenv(childBackendEnv)}})
	if err != nil {
		fail(err)
	}
	s := &Server{Router: tab, Engine: engineUnderTest, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if p := os.Getenv(childPeekEnv); p != "" {
		if s.PeekTimeout, err = time.ParseDuration(p); err != nil {
			fail(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	var hog []*os.File
	if os.Getenv(childHogEnv) == "1" {
		for {
			f, err := os.Open(os.DevNull)
			if err != nil {
				if !errors.Is(err, syscall.EMFILE) {
					fail(err)
				}
				break
			}
			hog = append(hog, f)
		}
	}
	fmt.Printf("LISTEN %s %d\n", ln.Addr(), s.ConnLimit())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	in := bufio.NewReader(os.Stdin)
	if len(hog) > 0 {
		in.ReadString('\n')
		for _, f := range hog {
			f.Close()
		}
		fmt.Fprintln(os.Stderr, "child: freed", len(hog), "descriptors")
	}
	io.Copy(io.Discard, in) // until the parent closes stdin
	s.Close()
	if err := <-done; err != ErrServerClosed {
		fail(fmt.Errorf("Serve: %w", err))
	}
	os.Exit(0)
}

// descriptorGateway is a gateway in a child process.
type descriptorGateway struct {
	addr      string
	connLimit int
	stdin     io.WriteCloser
	log       *syncbuf.Buffer
	cmd       *exec.Cmd
}

func startDescriptorChild(t *testing.T, backend string, nofile int, hog bool, env ...string) *descriptorGateway {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childBackendEnv+"="+backend, childLimitEnv+"="+strconv.Itoa(nofile))
	cmd.Env = append(cmd.Env, env...)
	if hog {
		cmd.Env = append(cmd.Env, childHogEnv+"=1")
	}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	g := &descriptorGateway{stdin: stdin, log: new(syncbuf.Buffer), cmd: cmd}
	cmd.Stderr = g.log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("gateway's log:\n%s", g.log.String())
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, g.log.String())
	_, err = fmt.Sscanf(line, "LISTEN %s %d", &g.addr, &g.connLimit)
	require.NoError(t, err, line)
	return g
}

// stop closes the child's stdin and waits for a clean exit.
func (g *descriptorGateway) stop(t *testing.T) {
	t.Helper()
	g.stdin.Close()
	require.NoError(t, g.cmd.Wait(), g.log.String())
}

// echoTwice sends the ClientHello and waits for its echo, calls between,
// then checks that a second message echoes too.
func echoTwice(c net.Conn, hello []byte, between func()) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.Write(hello); err != nil {
		return fmt.Errorf("write hello: %w", err)
	}
	buf := make([]byte, len(hello))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("first echo: %w", err)
	}
	between()
	if _, err := c.Write([]byte("again")); err != nil {
		return fmt.Errorf("write again: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:5]); err != nil || string(buf[:5]) != "again" {
		return fmt.Errorf("second echo: %q %v", buf[:5], err)
	}
	return nil
}

// More clients than the open-file limit allows at once are all forwarded:
// the gateway stops accepting at its share of the limit, the rest wait in
// the listen backlog, and none is lost to a dial without a descriptor. The
// first connections stay open until the gateway has said that the limit
// holds the others back, so the limit is reached on every run.
func TestOpenFileLimitHoldsConnectionsBackWithoutLosingAny(t *testing.T) {
	b := startBackend(t, echo)
	const nofile, clients = 256, 400
	g := startDescriptorChild(t, b.addr(), nofile, false)
	require.Equal(t, budgetFor(nofile).conns, g.connLimit)
	require.Less(t, g.connLimit, clients)

	hello := helloBytes(t, longName)
	heldBack := make(chan struct{})
	go func() {
		defer close(heldBack)
		waitFor(t, "the gateway to say the limit holds connections back", func() bool {
			return strings.Contains(g.log.String(), "open-file limit holds new connections back")
		})
	}()
	var wg sync.WaitGroup
	var echoed atomic.Int64
	errs := make([]error, clients)
	for i := range clients {
		c, err := net.Dial("tcp", g.addr) // the kernel completes these in the backlog
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = echoTwice(c, hello, func() { echoed.Add(1); <-heldBack })
		}()
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "client %d", i)
	}
	assert.EqualValues(t, clients, echoed.Load())
	assert.Equal(t, clients, b.Load2(), "every client reached the backend once")
	g.stop(t)
	log := g.log.String()
	assert.Equal(t, 1, strings.Count(log, "open-file limit holds"), "said once")
	assert.Contains(t, log, fmt.Sprintf("open_file_limit=%d conn_limit=%d", nofile, g.connLimit))
	assert.Zero(t, strings.Count(log, "too many open files"), "lines that say the gateway ran out of descriptors")
	assert.Zero(t, strings.Count(log, "dial-failed"), "connections lost")
	assert.Equal(t, clients, strings.Count(log, `msg="gateway: forwarding" `), "connections forwarded")
}

// Running out of descriptors to something else in the process never stops
// the server: accept errors back off and are retried, and the clients that
// waited are served once descriptors are free again. The child takes every
// free descriptor before it serves.
func TestOutOfDescriptorsBacksOffAndRecovers(t *testing.T) {
	b := startBackend(t, echo)
	g := startDescriptorChild(t, b.addr(), 64, true)
	const clients = 20
	hello := helloBytes(t, longName)
	conns := make([]net.Conn, clients)
	for i := range conns {
		var err error
		conns[i], err = net.Dial("tcp", g.addr)
		require.NoError(t, err)
	}
	waitFor(t, "accept to fail for lack of descriptors", func() bool {
		return strings.Contains(g.log.String(), "accept error; retrying") && strings.Contains(g.log.String(), "too many open files")
	})
	_, err := io.WriteString(g.stdin, "free\n")
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = echoTwice(c, hello, func() {}) }()
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "client %d", i)
	}
	g.stop(t)
	assert.Zero(t, strings.Count(g.log.String(), "dial-failed"), "accepted connections lost")
}

// 10,000 connections that send nothing (more than the gateway's share of
// a 20,000 open-file limit, so the last of them wait in the listen
// backlog) cost the gateway nothing it cannot take back: each is closed at
// its ClientHello deadline, no dial is tried for any, none is lost to a
// lack of descriptors, and a real client queued behind them all is
// forwarded once their slots are free.
func TestTenThousandIdleConnectionsTimeOutAndFreeTheirSlots(t *testing.T) {
	const nofile, idle = 20000, 10000
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur < idle+1000 {
		t.Fatalf("this test holds %d connections open and needs an open-file limit of %d or more; it is %d here", idle, idle+1000, lim.Cur)
	}
	b := startBackend(t, echo)
	g := startDescriptorChild(t, b.addr(), nofile, false, childPeekEnv+"=3s")
	require.Less(t, g.connLimit, idle, "more idle connections than the gateway holds at once")

	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range idle {
		c, err := net.Dial("tcp", g.addr)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	c, err := net.Dial("tcp", g.addr) // behind them all
	require.NoError(t, err)
	require.NoError(t, echoTwice(c, helloBytes(t, longName), func() {}), "the client queued behind the idle ones")

	// Every idle connection is closed by the gateway (EOF or a reset),
	// none by the test's deadline.
	var wg sync.WaitGroup
	var closed, stillOpen atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(2 * time.Minute))
			_, err := c.Read(make([]byte, 1))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				stillOpen.Add(1)
			} else {
				closed.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, stillOpen.Load(), "idle connections the gateway never closed")
	assert.EqualValues(t, idle, closed.Load())
	assert.Equal(t, 1, b.Load2(), "only the real client reached the backend")
	g.stop(t)
	log := g.log.String()
	assert.Equal(t, idle, strings.Count(log, "reason=peek-timeout"), "idle connections ended at their deadline")
	assert.Zero(t, strings.Count(log, "too many open files"), "lines that say the gateway ran out of descriptors")
	assert.Equal(t, 1, strings.Count(log, `msg="gateway: forwarding" `), "connections forwarded")
}

func TestBudgetFor(t *testing.T) {
	for _, tc := range []struct{ nofile, conns, pipes int }{
		{20000, 9375, 312},
		{1024, 480, 16},
		{256, 112, 8},
		{64, 16, 8},
	} {
		b := budgetFor(tc.nofile)
		require.NotNil(t, b, "%d", tc.nofile)
		assert.Equal(t, tc.conns, b.conns, "conns for %d", tc.nofile)
		assert.Equal(t, tc.pipes, b.pipes, "pipes for %d", tc.nofile)
		// What a budget can use at once fits the limit with its reserve.
		assert.LessOrEqual(t, 2*b.conns+2*b.pipes+16, tc.nofile, "%d", tc.nofile)
	}
	assert.Nil(t, budgetFor(32), "too few descriptors to share")
}
