package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The gateway's router refuses an http export unless -l7-exports says to
// pass it through as TCP (passthrough) or send it to the terminator
// (terminate).
func TestL7ExportsFlagReachesTheRouter(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "mesh.hcl"), []byte(`topology {
  datacenter   = "dc1"
  trust_domain = "bbbbbbbb-0000-4000-8000-000000000002.consul"
  services = [{ name = "api", addresses = ["127.0.20.10:21000"] }]
  peers = [{ name = "cluster-a", trust_domain = "aaaaaaaa-0000-4000-8000-000000000001.consul" }]
}
config_entries {
  bootstrap = [
    { Kind = "service-defaults", Name = "api", Protocol = "http" },
    { Kind = "exported-services", Name = "default", Services = [{ Name = "api", Consumers = [{ Peer = "cluster-a" }] }] },
  ]
}
`), 0o644))
	src, _, err := buildSource([]string{dir}, "dc1", "", nil, nil)
	require.NoError(t, err)
	hello := &sni.ClientHello{ServerName: sni.PeeredServiceSNI("api", "", "", "cluster-a", "bbbbbbbb-0000-4000-8000-000000000002.consul")}
	_, err = gatewayRouter(src, l7Handling{}, "").Route(context.Background(), hello)
	var rej *gateway.Rejection
	require.True(t, errors.As(err, &rej), "%v", err)
	assert.Equal(t, routing.ReasonL7Export, rej.Reason)
	route, err := gatewayRouter(src, l7Handling{pass: true}, "").Route(context.Background(), hello)
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.20.10:21000"}, route.Targets)
	served := false
	route, err = gatewayRouter(src, l7Handling{serve: func(net.Conn) { served = true }}, "").Route(context.Background(), hello)
	require.NoError(t, err)
	require.NotNil(t, route.Serve, "to the terminator")
	route.Serve(nil)
	assert.True(t, served)
	assert.Empty(t, route.Targets)
}
