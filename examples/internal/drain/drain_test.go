package drain_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/examples/internal/drain"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/sni"
)

// rig is a gateway forwarding every name to an echo backend.
type rig struct {
	srv  *gateway.Server
	addr string
	done chan struct{} // closed when Serve returned
}

func newRig(t *testing.T) *rig {
	t.Helper()
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	go echo.Serve(backend, nil)
	r := &rig{done: make(chan struct{})}
	r.srv = &gateway.Server{Router: gateway.RouterFunc(func(context.Context, *sni.ClientHello) (gateway.Route, error) {
		return gateway.Route{Name: "echo", Targets: []string{backend.Addr().String()}}, nil
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	go func() { r.srv.Serve(ln); close(r.done) }()
	t.Cleanup(func() { r.srv.Close() })
	return r
}

// open makes a connection through the gateway and checks an echo; the
// connection stays open.
func (r *rig) open(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	hello := hellotest.Record(t, "echo.example")
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(hello))
	if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, hello) {
		t.Fatalf("no echo through the gateway: %v", err)
	}
	return c
}

func (r *rig) accepting() bool {
	c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// steps records the order of a plan's calls.
type steps struct {
	mu  sync.Mutex
	got []string
}

func (s *steps) add(step string) {
	s.mu.Lock()
	s.got = append(s.got, step)
	s.mu.Unlock()
}

func (s *steps) list() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.got, ",")
}

func plan(r *rig, s *steps, grace, drainFor time.Duration, log *slog.Logger) drain.Plan {
	return drain.Plan{
		Unready:    func() { s.add("unready") },
		Withdraw:   func(context.Context) error { s.add("withdraw"); return nil },
		Grace:      grace,
		Server:     r.srv,
		Drain:      drainFor,
		Deregister: func(context.Context) error { s.add("deregister"); return nil },
		Logger:     log,
		Name:       "test",
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// During the grace period the gateway is out of the catalog but still
// forwards new connections.
func TestNewConnectionsDuringTheGracePeriod(t *testing.T) {
	r := newRig(t)
	var s steps
	hurry := make(chan struct{})
	res := make(chan drain.Result, 1)
	go func() { res <- plan(r, &s, time.Hour, time.Hour, nil).Run(hurry) }()
	waitFor(t, "withdrawn", func() bool { return s.list() == "unready,withdraw" })
	for range 20 {
		r.open(t).Close()
	}
	if s.list() != "unready,withdraw" {
		t.Fatalf("steps %q during the grace period", s.list())
	}
	close(hurry)
	<-res
}

// Once the grace period is over the gateway stops accepting, waits for the
// open connection, and deregisters last.
func TestGraceThenDrainThenDeregister(t *testing.T) {
	r := newRig(t)
	held := r.open(t)
	var s steps
	res := make(chan drain.Result, 1)
	go func() { res <- plan(r, &s, 50*time.Millisecond, time.Hour, nil).Run(nil) }()
	waitFor(t, "the listener closed after the grace period", func() bool { return !r.accepting() })
	if got := s.list(); got != "unready,withdraw" {
		t.Fatalf("steps %q while a connection is open; deregistration comes after the drain", got)
	}
	stillEchoes(t, held)
	held.Close()
	got := <-res
	if got.Cut != 0 || got.Hurried {
		t.Errorf("result %+v; want nothing cut", got)
	}
	if s.list() != "unready,withdraw,deregister" {
		t.Errorf("steps %q", s.list())
	}
}

// The drain bound closes what is left and says how many.
func TestDrainBoundCutsWhatIsLeft(t *testing.T) {
	r := newRig(t)
	r.open(t)
	r.open(t)
	var s steps
	var logs syncBuffer
	got := plan(r, &s, 0, 100*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil))).Run(nil)
	if got.Cut != 2 || got.Hurried {
		t.Errorf("result %+v; want 2 cut", got)
	}
	if !strings.Contains(logs.String(), "drain bound reached") || !strings.Contains(logs.String(), "cut=2") {
		t.Errorf("log does not say how many were cut:\n%s", logs.String())
	}
	if s.list() != "unready,withdraw,deregister" {
		t.Errorf("steps %q", s.list())
	}
}

// A second signal ends the grace period or the drain at once; the
// registration still goes.
func TestHurryCutsShort(t *testing.T) {
	for _, during := range []string{"grace", "drain"} {
		t.Run(during, func(t *testing.T) {
			r := newRig(t)
			held := r.open(t)
			var s steps
			var logs syncBuffer
			grace := time.Hour
			if during == "drain" {
				grace = 0
			}
			hurry := make(chan struct{})
			res := make(chan drain.Result, 1)
			go func() { res <- plan(r, &s, grace, time.Hour, slog.New(slog.NewTextHandler(&logs, nil))).Run(hurry) }()
			waitFor(t, "withdrawn", func() bool { return s.list() == "unready,withdraw" })
			if during == "drain" {
				waitFor(t, "the drain", func() bool { return !r.accepting() })
			} else {
				stillEchoes(t, held)
			}
			close(hurry)
			got := <-res
			if got.Cut != 1 || !got.Hurried {
				t.Errorf("result %+v; want 1 cut, hurried", got)
			}
			if !strings.Contains(logs.String(), "second signal during the "+during) {
				t.Errorf("log:\n%s", logs.String())
			}
			if s.list() != "unready,withdraw,deregister" {
				t.Errorf("steps %q", s.list())
			}
			held.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := held.Read(make([]byte, 1)); err == nil {
				t.Error("the held connection is still open")
			}
		})
	}
}

// Grace 0 is the shutdown of old: the listener closes at once.
func TestNoGraceStopsAcceptingAtOnce(t *testing.T) {
	r := newRig(t)
	held := r.open(t)
	var s steps
	res := make(chan drain.Result, 1)
	go func() { res <- plan(r, &s, 0, time.Hour, nil).Run(nil) }()
	select {
	case <-r.done: // Serve returned: the listener is closed
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still running 30 s after a shutdown without grace")
	}
	if r.accepting() {
		t.Error("still accepting")
	}
	stillEchoes(t, held)
	held.Close()
	if got := <-res; got.Cut != 0 {
		t.Errorf("result %+v", got)
	}
}

func stillEchoes(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("the open connection stopped echoing: %q, %v", b, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 30 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
