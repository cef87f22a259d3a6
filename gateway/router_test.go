package gateway

import (
	"context"
	"errors"
	"net"
	"testing"

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
