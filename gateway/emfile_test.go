package gateway

import (
	"bufio"
	"fmt"
	"github.com/meshgate/meshgate/internal/syncbuf"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// emfileChildEnv makes the test binary run emfileChild instead of the tests:
// a gateway, alone in its process, with a soft limit of 64 descriptors.
const emfileChildEnv = "MESHGATE_EMFILE_CHILD"

func emfileChild() {
	backendAddr := os.Getenv(emfileChildEnv)
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		os.Exit(2)
	}
	tab, _ := NewTable(map[string][]string{longName: {backendAddr}})
	s := &Server{Router: tab, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	s.Close()
	if err := <-done; err != ErrServerClosed {
		fmt.Fprintln(os.Stderr, "Serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Running out of file descriptors never stops the server: it backs off
// accepting, keeps serving the open connections, and serves the waiting ones
// once descriptors free up. The gateway runs in a child process with a
// 64-descriptor limit; 60 clients connect at once.
func TestOutOfDescriptorsBacksOffAndRecovers(t *testing.T) {
	b := startBackend(t, echo)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), emfileChildEnv+"="+b.addr())
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, stderr.String())
	gw := strings.TrimSpace(strings.TrimPrefix(line, "LISTEN "))

	const clients = 60
	hello := helloBytes(t, longName)
	conns := make([]net.Conn, clients)
	for i := range conns {
		conns[i], err = net.Dial("tcp", gw) // the kernel completes these in the backlog
		require.NoError(t, err)
		_, err = conns[i].Write(hello)
		require.NoError(t, err)
	}
	waitFor(t, "the gateway to run out of descriptors", func() bool { return strings.Contains(stderr.String(), "too many open files") })

	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			buf := make([]byte, len(hello))
			if _, err := io.ReadFull(c, buf); err != nil {
				errs[i] = fmt.Errorf("first echo: %w", err)
				return
			}
			// A connection open while the gateway is at its limit keeps working.
			if _, err := c.Write([]byte("again")); err != nil {
				errs[i] = err
				return
			}
			if _, err := io.ReadFull(c, buf[:5]); err != nil || string(buf[:5]) != "again" {
				errs[i] = fmt.Errorf("second echo: %q %v", buf[:5], err)
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gateway's log:\n%s", stderr.String())
		}
	})
	for i, err := range errs {
		assert.NoError(t, err, "client %d", i)
	}
	// Recovered: a new connection is served at once.
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write(hello)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadFull(c, make([]byte, len(hello)))
	require.NoError(t, err)
	c.Close()

	stdin.Close()
	require.NoError(t, cmd.Wait(), stderr.String())
	assert.Contains(t, stderr.String(), "accept error; retrying")
	assert.NotContains(t, stderr.String(), "dial-failed", "no accepted connection was lost")
}
