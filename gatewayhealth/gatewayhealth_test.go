package gatewayhealth_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gatewayhealth"
	"github.com/meshgate/meshgate/mesh"
)

// fixed is a source whose view a test replaces.
type fixed struct{ v atomic.Pointer[mesh.View] }

func (f *fixed) View() *mesh.View { return f.v.Load() }

func source(v *mesh.View) *fixed {
	f := &fixed{}
	f.v.Store(v)
	return f
}

// listen returns a listener on a fresh loopback port that accepts and
// closes connections, as a gateway does with a probe.
func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

var dc2 = mesh.Location{Datacenter: "dc2", Partition: "default"}

func view(gateways, unhealthy []string) *mesh.View {
	v := &mesh.View{Datacenter: "dc1", TrustDomain: "td.consul",
		Gateways: map[mesh.Location][]mesh.Endpoint{
			{Datacenter: "dc1", Partition: "default"}: {{Address: "127.0.0.1:1"}}, // local: never probed
		}}
	for _, a := range gateways {
		v.Gateways[dc2] = append(v.Gateways[dc2], mesh.Endpoint{Address: "10.0.0.1:8443", WAN: a})
	}
	if len(unhealthy) > 0 {
		v.UnhealthyGateways = map[mesh.Location][]mesh.Endpoint{}
		for _, a := range unhealthy {
			v.UnhealthyGateways[dc2] = append(v.UnhealthyGateways[dc2], mesh.Endpoint{Address: "10.0.0.1:8443", WAN: a})
		}
	}
	return v
}

func wans(v *mesh.View, l mesh.Location) []string {
	var out []string
	for _, e := range v.GatewaysIn(l) {
		out = append(out, e.WAN)
	}
	slices.Sort(out)
	return out
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

func sorted(s ...string) []string { slices.Sort(s); return s }

func TestGatewaysThatDoNotAnswerAreLeftOut(t *testing.T) {
	up := listen(t, "127.0.0.1:0").Addr().String()
	down := deadAddr(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	s := gatewayhealth.New(source(view([]string{up, down}, nil)), gatewayhealth.Options{Interval: 50 * time.Millisecond, Logger: log})
	defer s.Close()

	waitFor(t, "both probed, the gateway that does not answer left out", func() bool {
		return len(s.Gateways()) == 2 && slices.Equal(wans(s.View(), dc2), []string{up})
	})
	local := s.View().GatewaysIn(mesh.Location{Datacenter: "dc1"})
	if len(local) != 1 {
		t.Errorf("local gateways %v: the local datacenter's are not probed nor filtered", local)
	}
	if v1, v2 := s.View(), s.View(); v1 != v2 {
		t.Error("two views with nothing changed in between are not the same view")
	}
	states := s.Gateways()
	if len(states) != 2 || states[0].Location != "dc2" {
		t.Fatalf("Gateways() = %+v", states)
	}
	for _, g := range states {
		if (g.Address == up) != g.Up {
			t.Errorf("%s: Up %v, err %v", g.Address, g.Up, g.Err)
		}
	}
	time.Sleep(200 * time.Millisecond) // several more rounds
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logs.String(), "does not answer"); n != 1 {
		t.Errorf("%d log lines for one gateway going out; want 1:\n%s", n, logs.String())
	}
}

func TestEveryGatewayOutLeavesTheLocationWithNone(t *testing.T) {
	s := gatewayhealth.New(source(view([]string{deadAddr(t), deadAddr(t)}, nil)), gatewayhealth.Options{Interval: 50 * time.Millisecond})
	defer s.Close()
	waitFor(t, "dc2 with no gateway", func() bool {
		_, ok := s.View().Gateways[dc2]
		return !ok
	})
}

func TestAnUnhealthyGatewayThatAnswersIsRouted(t *testing.T) {
	healthy := listen(t, "127.0.0.1:0").Addr().String()
	fresh := listen(t, "127.0.0.1:0").Addr().String() // critical in the catalog, yet serving
	dead := deadAddr(t)
	src := source(view([]string{healthy}, []string{fresh, dead}))
	gate := make(chan struct{}) // the probes wait for it
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		<-gate
		return (&net.Dialer{}).DialContext(ctx, network, address)
	}
	s := gatewayhealth.New(src, gatewayhealth.Options{Interval: time.Hour, Timeout: time.Minute, Dial: dial}) // only the first probes
	defer s.Close()
	if got := wans(s.View(), dc2); !slices.Equal(got, []string{healthy}) {
		t.Fatalf("before any probe: %v; want the catalog's routable one only", got)
	}
	close(gate)
	waitFor(t, "the critical gateway that answers routed", func() bool { return slices.Equal(wans(s.View(), dc2), sorted(healthy, fresh)) })
	// A view naming one more: it is probed at once, not an interval later.
	another := listen(t, "127.0.0.1:0").Addr().String()
	src.v.Store(view([]string{healthy}, []string{fresh, dead, another}))
	waitFor(t, "a new critical gateway that answers routed", func() bool {
		return slices.Equal(wans(s.View(), dc2), sorted(healthy, fresh, another))
	})
}

func TestARestartedGatewayComesBack(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	other := listen(t, "127.0.0.1:0").Addr().String()
	s := gatewayhealth.New(source(view([]string{addr, other}, nil)), gatewayhealth.Options{Interval: 20 * time.Millisecond})
	defer s.Close()
	waitFor(t, "both probed", func() bool { return len(s.Gateways()) == 2 })
	ln.Close()
	waitFor(t, "the stopped gateway out", func() bool { return slices.Equal(wans(s.View(), dc2), []string{other}) })
	var again net.Listener
	waitFor(t, "the port free again", func() bool {
		l, err := net.Listen("tcp", addr)
		again = l
		return err == nil
	})
	again.Close()
	listen(t, addr)
	waitFor(t, "the restarted gateway back", func() bool { return slices.Equal(wans(s.View(), dc2), sorted(addr, other)) })
}

func TestPeersGatewaysAreProbed(t *testing.T) {
	up := listen(t, "127.0.0.1:0").Addr().String()
	down := deadAddr(t)
	v := view(nil, nil)
	v.Peers = map[string]mesh.Peer{"east": {Name: "east", Gateways: []string{down, up},
		Imports: []mesh.ImportedService{{Name: "api", Gateways: []string{up, down}}, {Name: "web", Gateways: []string{up}}}}}
	s := gatewayhealth.New(source(v), gatewayhealth.Options{Interval: 50 * time.Millisecond})
	defer s.Close()
	waitFor(t, "the peer's gateway that does not answer left out", func() bool {
		p := s.View().Peers["east"]
		return slices.Equal(p.Gateways, []string{up}) && slices.Equal(p.Imports[0].Gateways, []string{up})
	})
	if g := v.Peers["east"].Imports[0].Gateways; len(g) != 2 {
		t.Errorf("the wrapped source's view was changed: %v", g)
	}
	for _, g := range s.Gateways() {
		if g.Location != "peer east" {
			t.Errorf("location %q; want \"peer east\"", g.Location)
		}
	}
}

func TestATimeoutTakesTwoInARow(t *testing.T) {
	addr := "127.0.0.1:9" // never dialled: the dial below decides
	var silent atomic.Bool
	probes := make(chan bool, 100)
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		if silent.Load() {
			<-ctx.Done() // a gateway that does not answer at all
			probes <- false
			return nil, ctx.Err()
		}
		probes <- true
		c1, c2 := net.Pipe()
		c2.Close()
		return c1, nil
	}
	s := gatewayhealth.New(source(view([]string{addr}, nil)), gatewayhealth.Options{Interval: 10 * time.Millisecond, Timeout: 10 * time.Millisecond, Dial: dial})
	defer s.Close()
	waitFor(t, "a probe", func() bool { return len(s.Gateways()) == 1 })
	silent.Store(true)
	for first := true; ; {
		if !<-probes {
			if first {
				first = false
				if g := s.Gateways(); !g[0].Up {
					t.Fatal("one timed-out probe took the gateway out")
				}
				continue
			}
			break
		}
	}
	waitFor(t, "the gateway out after two timeouts", func() bool { return !s.Gateways()[0].Up && len(wans(s.View(), dc2)) == 0 })
}

func TestFollowGoesToTheWrappedSource(t *testing.T) {
	f := &following{fixed: source(view(nil, nil))}
	s := gatewayhealth.New(f, gatewayhealth.Options{})
	defer s.Close()
	var m mesh.Follower = s
	if err := m.Follow(context.Background(), mesh.ServiceKey{Name: "api", Datacenter: "dc2"}); err != nil || f.keys != 1 {
		t.Fatalf("Follow: %v, %d keys reached the wrapped source", err, f.keys)
	}
	plain := gatewayhealth.New(source(view(nil, nil)), gatewayhealth.Options{})
	defer plain.Close()
	if err := plain.Follow(context.Background(), mesh.ServiceKey{Name: "api"}); err != nil {
		t.Fatal(err)
	}
}

type following struct {
	*fixed
	keys int
}

func (f *following) Follow(_ context.Context, keys ...mesh.ServiceKey) error {
	f.keys += len(keys)
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
