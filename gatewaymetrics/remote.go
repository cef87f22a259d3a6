package gatewaymetrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RemoteGateway is the state of one probed gateway of another datacenter,
// partition or peer (such as gatewayhealth.Source.Gateways gives).
type RemoteGateway struct {
	// Location is "dc2", "dc2/partition" or "peer NAME".
	Location string
	Address  string
	Up       bool
	// Probe is the last successful probe's connect time.
	Probe time.Duration
}

// RemoteGatewaysCollector returns a collector of the probed gateways,
// read at each scrape: meshgate_remote_gateway_up (1 while the last probe
// connected, 0 while the gateway is left out of routing) and
// meshgate_remote_gateway_probe_seconds (the last successful probe's
// connect time), labelled by location and address. Envoy under Consul runs
// no such probe, so has no counterpart.
func RemoteGatewaysCollector(state func() []RemoteGateway) prometheus.Collector {
	return remoteCollector{state}
}

type remoteCollector struct{ state func() []RemoteGateway }

var (
	descRemoteUp    = prometheus.NewDesc("meshgate_remote_gateway_up", "Whether a gateway of another datacenter, partition or peer answers probes (1) or is left out of routing (0).", []string{"location", "address"}, nil)
	descRemoteProbe = prometheus.NewDesc("meshgate_remote_gateway_probe_seconds", "The last successful probe's connect time to a gateway of another datacenter, partition or peer.", []string{"location", "address"}, nil)
)

func (c remoteCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRemoteUp
	ch <- descRemoteProbe
}

func (c remoteCollector) Collect(ch chan<- prometheus.Metric) {
	for _, g := range c.state() {
		up := 0.0
		if g.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descRemoteUp, prometheus.GaugeValue, up, g.Location, g.Address)
		ch <- prometheus.MustNewConstMetric(descRemoteProbe, prometheus.GaugeValue, g.Probe.Seconds(), g.Location, g.Address)
	}
}
