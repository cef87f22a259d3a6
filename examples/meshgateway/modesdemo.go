package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
)

// modesDemo is the second half of -demo: the gateway being run plays the
// local datacenter's mesh gateway; this starts another meshgate gateway for
// a second datacenter, a Connect-native "api" there with a certificate from
// a throwaway CA, and a sidecar (package sidecar) for "web" that reaches api
// in each mode. Each gateway counts the connections it forwards, so the
// demo prints the hops each connection really took.
type modesDemo struct {
	local, remote string // datacenters
	trustDomain   string
	ca            *sidecartest.CA
	apiAddr       string
	remoteGateway *forwardCounter // the second datacenter's gateway
	localGateway  *forwardCounter // an observer of the gateway being run
	remoteAddr    string
}

// forwardCounter is a ConnObserver counting the forwarded connections for
// one server name.
type forwardCounter struct {
	gateway.Counters
	serverName string
	mu         sync.Mutex
	n          int
}

func (f *forwardCounter) Closed(r *gateway.ConnRecord) {
	if r.Outcome == gateway.OutcomeForwarded && r.ServerName == f.serverName {
		f.mu.Lock()
		f.n++
		f.mu.Unlock()
	}
}

func (f *forwardCounter) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.n }

// startModesDemo starts the second datacenter: its api and its gateway.
func startModesDemo(ctx context.Context, local, trustDomain string) (*modesDemo, error) {
	m := &modesDemo{local: local, remote: "dc2", trustDomain: trustDomain, localGateway: &forwardCounter{}, remoteGateway: &forwardCounter{}}
	if local == "dc2" {
		m.remote = "dc1"
	}
	apiSNI := sni.ServiceSNI("api", "", "", "", m.remote, trustDomain)
	m.localGateway.serverName, m.remoteGateway.serverName = apiSNI, apiSNI
	var err error
	if m.ca, err = sidecartest.NewCA(trustDomain); err != nil {
		return nil, err
	}
	apiCerts, err := m.certs("api", m.remote)
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", apiCerts.ServerTLSConfig())
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	go echo.Serve(ln, nil)
	m.apiAddr = ln.Addr().String()

	remoteView, err := config.StaticView(&mesh.View{Datacenter: m.remote, TrustDomain: trustDomain,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: {{Address: m.apiAddr, WAN: m.apiAddr}}}})
	if err != nil {
		return nil, err
	}
	gw := &gateway.Server{Router: &routing.MeshRouter{Source: remoteView}, Observer: m.remoteGateway}
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m.remoteAddr = gln.Addr().String()
	go gw.Serve(gln)
	context.AfterFunc(ctx, func() { gw.Close() })
	return m, nil
}

// certs issues service in datacenter a leaf from the demo CA.
func (m *modesDemo) certs(service, datacenter string) (*sidecar.Certs, error) {
	return m.ca.Certs(sidecar.Identity{Datacenter: datacenter, Service: service})
}

// run dials api from web in each mode through localGateway (the gateway
// being run) and logs the hops each connection took.
func (m *modesDemo) run(log *slog.Logger, localGateway string) {
	src, err := config.StaticView(&mesh.View{Datacenter: m.local, TrustDomain: m.trustDomain,
		Services: map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api", Datacenter: m.remote}: {{WAN: m.apiAddr}}},
		Gateways: map[mesh.Location][]mesh.Endpoint{
			{Datacenter: m.local}:  {{Address: localGateway}},
			{Datacenter: m.remote}: {{WAN: m.remoteAddr}},
		}})
	if err != nil {
		log.Error("demo: modes", "err", err)
		return
	}
	certs, err := m.certs("web", m.local)
	if err != nil {
		log.Error("demo: modes", "err", err)
		return
	}
	d := &sidecar.Dialer{Source: src, Certs: certs, Instance: mesh.Instance{Service: "web", Name: "web-sidecar-proxy"}}
	for _, mode := range []api.MeshGatewayMode{api.MeshGatewayModeNone, api.MeshGatewayModeLocal, api.MeshGatewayModeRemote} {
		before := [2]int{m.localGateway.count(), m.remoteGateway.count()}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, plan, err := d.Dial(ctx, api.Upstream{DestinationName: "api", Datacenter: m.remote, MeshGateway: api.MeshGatewayConfig{Mode: mode}})
		cancel()
		if err != nil {
			log.Error("demo: mode "+string(mode), "err", err)
			continue
		}
		handshake := time.Since(start)
		c.Write([]byte("ping"))
		reply := make([]byte, 4)
		_, err = io.ReadFull(c, reply)
		c.Close()
		if err != nil {
			log.Error("demo: mode "+string(mode)+": echo", "err", err)
			continue
		}
		// The gateways count a connection once it has closed through them.
		crossed := func() [2]int { return [2]int{m.localGateway.count() - before[0], m.remoteGateway.count() - before[1]} }
		want := map[api.MeshGatewayMode][2]int{api.MeshGatewayModeNone: {0, 0}, api.MeshGatewayModeLocal: {1, 1}, api.MeshGatewayModeRemote: {0, 1}}[mode]
		for deadline := time.Now().Add(2 * time.Second); crossed() != want && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		got := crossed()
		log.Info("demo: mode "+string(mode), "hops", fmt.Sprint(plan.Hops),
			"through_"+m.local+"_gateway", got[0], "through_"+m.remote+"_gateway", got[1],
			"sni", plan.SNI, "dialled", plan.Dial, "handshake", handshake.Round(10*time.Microsecond).String(), "reply", string(reply))
	}
}
