package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// eventLoopEnv, set to 1, makes startGateway serve with the event loops
// (EngineEpoll); engineEnv, set to an engine's name, with that engine.
const (
	eventLoopEnv = "MESHGATE_TEST_EVENTLOOP"
	engineEnv    = "MESHGATE_TEST_ENGINE"
)

// engineUnderTest is the engine this run's gateways use: "" for the first
// run (a Server's own choice, by default the goroutines).
var engineUnderTest = func() Engine {
	if e := Engine(os.Getenv(engineEnv)); e != "" {
		return e
	}
	if os.Getenv(eventLoopEnv) == "1" {
		return EngineEpoll
	}
	return ""
}()

// eventLoopUnderTest: this run's gateways use loops of raw sockets (the
// epoll or the io_uring loops) rather than a goroutine per connection.
var eventLoopUnderTest = engineUnderTest == EngineEpoll || engineUnderTest == EngineIOUring

// TestMain runs the package's tests, then, on Linux, runs them all again
// in a child process for each loop engine (engineEnv), so that every test
// that starts its gateway with startGateway also checks the event loops
// and the io_uring loops.
func TestMain(m *testing.M) {
	code := m.Run()
	// The idle poller is a process-wide goroutine, like Go's own netpoller.
	if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/meshgate/meshgate/gateway.(*parker).loop")); code == 0 && err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		code = 1
	}
	if code == 0 && engineUnderTest == "" && runtime.GOOS == "linux" && !fuzzingOrListing() {
		for _, e := range []Engine{EngineEpoll, EngineIOUring} {
			if e == EngineIOUring {
				// It does not fall back here: a machine this project
				// builds on has io_uring, and the run would test nothing.
				if err := CheckEngine(e); err != nil {
					fmt.Fprintln(os.Stderr, "gateway: the io_uring run cannot start:", err)
					code = 1
					break
				}
			}
			fmt.Println("gateway: the tests again, startGateway's servers on engine " + string(e) + " (" + engineEnv + "=" + string(e) + ")")
			cmd := exec.Command(os.Args[0], os.Args[1:]...)
			cmd.Env = append(os.Environ(), engineEnv+"="+string(e))
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "gateway: on engine "+string(e)+":", err)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// goroutineEngineOnly skips a test of the goroutines that carry
// connections without the loops, in the runs that have them: the first
// run checked them.
func goroutineEngineOnly(t *testing.T) {
	if eventLoopUnderTest {
		t.Skip("SKIP in the " + string(engineUnderTest) + " run: this test checks the goroutines of the engine without loops, which the first run of the package tested")
	}
}

// fuzzingOrListing reports whether this run fuzzes or lists tests, which
// the second run would repeat for nothing.
func fuzzingOrListing() bool {
	for _, name := range []string{"test.fuzz", "test.list"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return true
		}
	}
	return false
}

const longName = "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

// selfSigned returns a certificate for name and a pool that trusts it.
func selfSigned(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// backend is a real server on loopback that counts its connections and runs
// handle on each.
type backend struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func startBackend(t testing.TB, handle func(net.Conn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return serveBackend(t, ln, handle)
}

// serveBackend is startBackend on a listener of the caller's.
func serveBackend(t testing.TB, ln net.Listener, handle func(net.Conn)) *backend {
	t.Helper()
	b := &backend{ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

// echo copies everything back through a buffer, then half-closes. (Not
// io.Copy: on TCP it splices, and an idle splice holds a pipe pair, which
// would muddle the descriptor counts of the gateway's tests.)
func echo(c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	c.(*net.TCPConn).CloseWrite()
}

// tlsEcho terminates TLS with cert and echoes the plaintext.
func tlsEcho(cert tls.Certificate) func(net.Conn) {
	return func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			return
		}
		io.Copy(tc, tc)
		tc.CloseWrite()
	}
}

// startGateway runs s on a loopback listener until the test ends.
func startGateway(t testing.TB, s *Server) string {
	t.Helper()
	if s.Engine == "" {
		s.Engine = engineUnderTest
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		require.ErrorIs(t, <-errc, ErrServerClosed)
	})
	return ln.Addr().String()
}

func tableFor(t testing.TB, routes map[string][]string) *Table {
	t.Helper()
	tab, err := NewTable(routes)
	require.NoError(t, err)
	return tab
}

// helloBytes is a real ClientHello from crypto/tls for name.
func helloBytes(t testing.TB, name string) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
		}
	}()
	c, err := ln.Accept()
	require.NoError(t, err)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf [16 << 10]byte
	n, err := io.ReadAtLeast(c, buf[:], 5)
	require.NoError(t, err)
	for n < 5+(int(buf[3])<<8|int(buf[4])) {
		m, err := c.Read(buf[n:])
		require.NoError(t, err)
		n += m
	}
	return append([]byte(nil), buf[:n]...)
}

// waitFor polls cond for up to 10 s; tests assert outcomes, not timings.
// echoed dials gw, sends hello and reads it back from an echoing backend
// (with a 30 s deadline left on the connection), and returns the open
// connection.
func echoed(t testing.TB, gw string, hello []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write(hello)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = io.ReadFull(c, make([]byte, len(hello)))
	require.NoError(t, err)
	return c
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var bg = context.Background()

func (b *backend) Load2() int { return int(b.accepted.Load()) }

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// dialFunc is Server.Dial's type.
type dialFunc = func(ctx context.Context, network, address string) (net.Conn, error)

// forwardingPaths runs test once per way the Forwarder moves bytes: with
// Server.Dial nil, which splices on Linux (and copies elsewhere), and with a
// Dial that hides the upstream's *net.TCPConn, which forces the portable copy
// path that every other system takes. spliced says which path to expect.
func forwardingPaths(t *testing.T, test func(t *testing.T, dial dialFunc, spliced bool)) {
	t.Run("native", func(t *testing.T) { test(t, nil, runtime.GOOS == "linux") })
	t.Run("copy", func(t *testing.T) {
		var d net.Dialer
		test(t, func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return wrapped{c}, nil
		}, false)
	})
}

// wrapped hides *net.TCPConn so the Forwarder must copy through user space.
type wrapped struct{ net.Conn }

// CloseWrite passes half-closes through to the hidden connection.
func (w wrapped) CloseWrite() error { return w.Conn.(*net.TCPConn).CloseWrite() }
