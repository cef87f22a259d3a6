package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/hellotest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTable(t *testing.T) {
	tab := tableFor(t, map[string][]string{
		"api.example.com":  {"127.0.0.1:1"},
		"*.example.com":    {"127.0.0.1:2"},
		"*.eu.example.com": {"127.0.0.1:3"},
	})
	cases := []struct {
		name, want, route string
	}{
		{"api.example.com", "127.0.0.1:1", "api.example.com"},
		{"web.example.com", "127.0.0.1:2", "*.example.com"},
		{"a.b.example.com", "127.0.0.1:2", "*.example.com"},
		{"web.eu.example.com", "127.0.0.1:3", "*.eu.example.com"},
	}
	for _, c := range cases {
		r, err := tab.Route(context.Background(), &sni.ClientHello{ServerName: c.name})
		require.NoError(t, err, c.name)
		assert.Equal(t, []string{c.want}, r.Targets, c.name)
		assert.Equal(t, c.route, r.Name)
	}
	for _, name := range []string{"example.com", "other.org", ""} {
		_, err := tab.Route(context.Background(), &sni.ClientHello{ServerName: name})
		var rej *Rejection
		require.ErrorAs(t, err, &rej, name)
		assert.Equal(t, ReasonNoRoute, rej.Reason)
		assert.ErrorIs(t, err, ErrRejected)
	}
}

func TestNewTableRejectsBadPatterns(t *testing.T) {
	_, err := NewTable(map[string][]string{"a.*.com": {"x:1"}, "": {"x:1"}, "ok.com": nil, "*": {"x:1"}})
	require.Error(t, err)
	for _, want := range []string{`"a.*.com"`, `""`, `"ok.com" has no targets`, `"*"`} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestSwitch(t *testing.T) {
	var s Switch
	_, err := s.Route(context.Background(), &sni.ClientHello{ServerName: "a"})
	require.ErrorIs(t, err, ErrRejected)
	s.Store(RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
		return Route{Name: "one", Targets: []string{"127.0.0.1:1"}}, nil
	}))
	r, err := s.Route(context.Background(), &sni.ClientHello{})
	require.NoError(t, err)
	assert.Equal(t, "one", r.Name)
	s.Store(RouterFunc(func(context.Context, *sni.ClientHello) (Route, error) {
		return Route{}, Reject("custom", "because %w", errors.New("reasons"))
	}))
	_, err = s.Route(context.Background(), &sni.ClientHello{})
	var rej *Rejection
	require.ErrorAs(t, err, &rej)
	assert.Equal(t, "custom", rej.Reason)
	assert.Equal(t, "gateway: rejected (custom): because reasons", err.Error())
}

// A Router sees which connection it routes: its addresses and a number.
func TestRouterSeesTheConnection(t *testing.T) {
	seen := make(chan ConnInfo, 2)
	router := RouterFunc(func(ctx context.Context, hello *sni.ClientHello) (Route, error) {
		ci, ok := ConnInfoFrom(ctx)
		if !ok {
			return Route{}, Reject("test", "no ConnInfo")
		}
		seen <- ci
		return Route{}, Reject("test", "seen")
	})
	srv := &Server{Router: router}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	defer srv.Close()
	var locals []string
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		locals = append(locals, c.LocalAddr().String())
		_, err = c.Write(helloBytes(t, "a.example"))
		require.NoError(t, err)
		ci := <-seen
		c.Close()
		assert.Equal(t, c.LocalAddr().String(), ci.Remote.String())
		assert.Equal(t, ln.Addr().String(), ci.Local.String())
		assert.Equal(t, uint64(len(locals)), ci.ID)
	}
	_, ok := ConnInfoFrom(context.Background())
	assert.False(t, ok)
}

// Rotation starts at the first target, gives each the first place in turn
// with the rest following in order, and never changes the list it is given.
func TestRotation(t *testing.T) {
	var r Rotation
	targets := []string{"a", "b", "c"}
	assert.Equal(t, []string{"a", "b", "c"}, r.Of(targets))
	assert.Equal(t, []string{"b", "c", "a"}, r.Of(targets))
	assert.Equal(t, []string{"c", "a", "b"}, r.Of(targets))
	assert.Equal(t, []string{"a", "b", "c"}, r.Of(targets))
	assert.Equal(t, []string{"a", "b", "c"}, targets)
	assert.Equal(t, []string{"x"}, r.Of([]string{"x"}))
	assert.Empty(t, r.Of(nil))
}

// keeper is a Router that keeps every hello it is given, as Router's
// contract allows, and refuses the connection.
type keeper struct {
	mu     sync.Mutex
	hellos []*sni.ClientHello
}

func (k *keeper) Route(_ context.Context, h *sni.ClientHello) (Route, error) {
	k.mu.Lock()
	k.hellos = append(k.hellos, h)
	k.mu.Unlock()
	return Route{}, Reject(ReasonNoRoute, "kept")
}

// A Router may keep the hello it is given: a thousand connections with
// distinct names and ALPN lists, eight at a time, leave a thousand hellos
// each still holding its own connection's values.
func TestRouterMayKeepTheHello(t *testing.T) {
	const n = 1000
	k := &keeper{}
	var counts Counters
	gw := startGateway(t, &Server{Router: k, Observer: &counts})
	type sent struct {
		name string
		alpn []string
	}
	want := map[string]sent{}
	records := make([][]byte, n)
	for i := range n {
		s := sent{name: fmt.Sprintf("svc-%d.example", i), alpn: []string{fmt.Sprintf("proto-%d", i), "h2"}[:1+i%2]}
		want[s.name] = s
		records[i] = hellotest.RecordALPN(t, s.name, s.alpn...)
	}
	var wg sync.WaitGroup
	next := make(chan []byte)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rec := range next {
				c, err := net.Dial("tcp", gw)
				if err != nil {
					t.Error(err)
					return
				}
				c.Write(rec)
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.Copy(io.Discard, c) // refused: closed by the gateway
				c.Close()
			}
		}()
	}
	for _, rec := range records {
		next <- rec
	}
	close(next)
	wg.Wait()
	waitFor(t, "every refusal", func() bool { return counts.Snapshot().Rejected[ReasonNoRoute] == n })

	k.mu.Lock()
	defer k.mu.Unlock()
	require.Len(t, k.hellos, n)
	intact := 0
	for _, h := range k.hellos {
		w, ok := want[h.ServerName]
		if ok && slices.Equal(w.alpn, h.ALPN) && h.MaxVersion() == tls.VersionTLS13 {
			intact++
			delete(want, h.ServerName) // each name once
		}
	}
	assert.Equal(t, n, intact, "hellos still holding their own connection's name, ALPN and versions")
}

// A Router that fails with a plain error is counted apart from one that
// knows no such name: a broken backend does not look like an unknown name.
func TestRouterErrorsHaveTheirOwnReason(t *testing.T) {
	var counts Counters
	gw := startGateway(t, &Server{Observer: &counts, Router: RouterFunc(func(_ context.Context, h *sni.ClientHello) (Route, error) {
		if h.ServerName == "broken.example" {
			return Route{}, errors.New("the routing table's store is unreachable")
		}
		return Route{}, Reject(ReasonNoRoute, "unknown")
	})})
	for _, name := range []string{"broken.example", "unknown.example"} {
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		c.Write(helloBytes(t, name))
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}
	waitFor(t, "both refusals", func() bool { return counts.Snapshot().RejectedTotal() == 2 })
	assert.Equal(t, map[string]int64{ReasonRouterError: 1, ReasonNoRoute: 1}, counts.Snapshot().Rejected)
}
