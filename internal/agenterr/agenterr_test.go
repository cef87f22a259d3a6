package agenterr

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A 403 names the endpoint and the rule to add, derived from the
// permission Consul's answer names; the token's AccessorID stays as Consul
// wrote it, and nothing else of the token is known here to print.
func TestClassifyPermission(t *testing.T) {
	call := Call{What: "listing peerings", Endpoint: "GET /v1/peerings", Rules: []Rule{ReadPeerings}}
	for consul, want := range map[string]Rule{
		`Permission denied: token with AccessorID '1df6' lacks permission 'peering:read'`:            ReadPeerings,
		`Permission denied: token with AccessorID '1df6' lacks permission 'service:read' on "api"`:   ReadServices,
		`Permission denied: token with AccessorID '1df6' lacks permission 'node:read' on "n1"`:       ReadNodes,
		`Permission denied: token with AccessorID '1df6' lacks permission 'service:write' on "gw-a"`: WriteService("gw-a"),
		`Permission denied: token with AccessorID '1df6' lacks permission 'agent:read' on "n1"`:      `agent "n1" { policy = "read" }`,
		`Permission denied: token with AccessorID '1df6' lacks permission 'mesh:write'`:              WriteMesh,
		`Permission denied`: ReadPeerings, // names nothing: the call's own
	} {
		err := Classify("consulview", call, api.StatusError{Code: 403, Body: consul})
		require.ErrorIs(t, err, ErrPermissionDenied, consul)
		var pe *PermissionError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, []Rule{want}, pe.Need, consul)
		assert.Contains(t, err.Error(), "GET /v1/peerings")
		assert.Contains(t, err.Error(), "add "+string(want)+" to the token's policy")
		assert.Contains(t, err.Error(), consul)
	}
	// The same answer, as a plain error from the typed client.
	err := Classify("registration", Call{What: "registering", Endpoint: "PUT /v1/agent/service/register"},
		fmt.Errorf("Unexpected response code: 403 (Permission denied: token with AccessorID 'x' lacks permission 'service:write' on \"mesh-gateway\")"))
	assert.EqualError(t, err, `registration: the Consul agent denied PUT /v1/agent/service/register (registering): add service "mesh-gateway" { policy = "write" } to the token's policy (Consul: Permission denied: token with AccessorID 'x' lacks permission 'service:write' on "mesh-gateway")`)
}

func TestFiltered(t *testing.T) {
	call := Call{What: "reading the health checks", Endpoint: "GET /v1/health/state/any", Rules: []Rule{ReadNodes, ReadServices}}
	assert.NoError(t, Filtered("consulview", call, &api.QueryMeta{}))
	assert.NoError(t, Filtered("consulview", call, nil))
	err := Filtered("consulview", call, &api.QueryMeta{ResultsFilteredByACLs: true})
	require.ErrorIs(t, err, ErrPermissionDenied)
	assert.EqualError(t, err, `consulview: the Consul agent filtered by ACLs the answer to GET /v1/health/state/any (reading the health checks): add node_prefix "" { policy = "read" } and service_prefix "" { policy = "read" } to the token's policy`)
}

func TestClassifyOthers(t *testing.T) {
	call := Call{What: "listing services", Endpoint: "GET /v1/catalog/services"}
	err := Classify("consulview", call, api.StatusError{Code: 400, Body: `Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature`})
	require.ErrorIs(t, err, ErrEnterpriseOnly)
	assert.Contains(t, err.Error(), "Namespaces are a Consul Enterprise feature")

	err = Classify("consulview", call, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})
	require.ErrorIs(t, err, ErrAgentUnreachable)
	require.NotErrorIs(t, err, ErrPermissionDenied)

	// A port with 403 in it is no denial.
	err = Classify("consulview", call, errors.New(`Get "http://127.0.0.1:40300/v1/catalog/services": EOF`))
	require.NotErrorIs(t, err, ErrPermissionDenied)
	assert.Contains(t, err.Error(), "GET /v1/catalog/services")
}
