package gatewaymetrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRemoteGatewaysCollector(t *testing.T) {
	states := []gatewaymetrics.RemoteGateway{
		{Location: "dc2", Address: "127.0.0.2:8443", Up: true, Probe: 1500 * time.Microsecond},
		{Location: "peer east", Address: "127.0.0.3:8443"},
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(gatewaymetrics.RemoteGatewaysCollector(func() []gatewaymetrics.RemoteGateway { return states }))
	want := `
# HELP meshgate_remote_gateway_probe_seconds The last successful probe's connect time to a gateway of another datacenter, partition or peer.
# TYPE meshgate_remote_gateway_probe_seconds gauge
meshgate_remote_gateway_probe_seconds{address="127.0.0.2:8443",location="dc2"} 0.0015
meshgate_remote_gateway_probe_seconds{address="127.0.0.3:8443",location="peer east"} 0
# HELP meshgate_remote_gateway_up Whether a gateway of another datacenter, partition or peer answers probes (1) or is left out of routing (0).
# TYPE meshgate_remote_gateway_up gauge
meshgate_remote_gateway_up{address="127.0.0.2:8443",location="dc2"} 1
meshgate_remote_gateway_up{address="127.0.0.3:8443",location="peer east"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
