package routing_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every field set and not applied is named in one warning, at the first
// check and each time the list changes, never twice in a row.
func TestUnappliedWarner(t *testing.T) {
	var out syncbuf.Buffer
	extra := []string{"proxy-defaults AccessLogs: not applied: -access-log wins"}
	w := &routing.UnappliedWarner{Logger: slog.New(slog.NewTextHandler(&out, nil)), Extra: func() []string { return extra }}
	view := func(policy string) *mesh.View {
		src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: "td.consul",
			Resolvers: map[mesh.EntryKey]*api.ServiceResolverConfigEntry{{Name: "api"}: {Kind: api.ServiceResolver, Name: "api",
				LoadBalancer: &api.LoadBalancer{Policy: policy}}}})
		require.NoError(t, err)
		return src.View()
	}
	maglev := view("maglev")
	w.Check(maglev)
	w.Check(maglev)
	w.Check(view("maglev"))
	assert.Equal(t, 1, strings.Count(out.String(), "level=WARN"), out.String())
	assert.Contains(t, out.String(), `LoadBalancer.Policy \"maglev\"`)
	assert.Contains(t, out.String(), "-access-log wins")

	extra = nil
	w.Recheck()
	assert.Equal(t, 2, strings.Count(out.String(), "level=WARN"), "the list changed")
	w.Check(view("random"))
	assert.Contains(t, out.String(), "every Consul field set is applied again")
	w.Check(view("least_request"))
	assert.Equal(t, 2, strings.Count(out.String(), "level=WARN"))
	assert.Equal(t, 1, strings.Count(out.String(), "level=INFO"))
}
