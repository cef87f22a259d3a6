package consulview_test

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"
)

// registerMany registers n services, each with a connect-proxy (and with
// checks, a passing check on it), on n/50 nodes, through the catalog in
// transactions of 64 operations.
func registerMany(tb testing.TB, c *api.Client, prefix string, n int, checks bool) {
	tb.Helper()
	var ops api.TxnOps
	flush := func() {
		if len(ops) == 0 {
			return
		}
		ok, resp, _, err := c.Txn().Txn(ops, nil)
		require.NoError(tb, err)
		require.True(tb, ok, "%v", resp)
		ops = ops[:0]
	}
	nodes := map[string]bool{}
	for i := range n {
		node := fmt.Sprintf("%s-node-%d", prefix, i/50)
		if !nodes[node] {
			nodes[node] = true
			ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: node, Address: "127.0.0.1"}}})
		}
		svc := fmt.Sprintf("%s-%05d", prefix, i)
		ops = append(ops,
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node, Service: api.AgentService{ID: svc, Service: svc, Port: 20000 + i%40000}}},
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node, Service: api.AgentService{Kind: api.ServiceKindConnectProxy,
				ID: svc + "-sidecar-proxy", Service: svc + "-sidecar-proxy", Port: 20000 + i%40000,
				Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: svc}}}})
		if checks {
			ops = append(ops, checkOp(node, svc, api.HealthPassing))
		}
		if len(ops) >= 60 {
			flush()
		}
	}
	flush()
}

// checkOp sets the check of service svc's sidecar on node to status.
func checkOp(node, svc, status string) *api.TxnOp {
	return &api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{Node: node, CheckID: svc + "-check", Name: svc,
		Status: status, ServiceID: svc + "-sidecar-proxy", ServiceName: svc + "-sidecar-proxy"}}}
}
