package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/examples/internal/cli"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func start(t *testing.T, args ...string) (string, *syncbuf.Buffer, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncbuf.Buffer
	ready := make(chan string, 1)
	done := make(chan error, 1)
	if !slices.Contains(args, "-proxy-id") { // which listens where its registration says
		args = append([]string{"-listen", "127.0.0.1:0"}, args...)
	}
	if !slices.Contains(args, "-shutdown-grace") { // the tests of the grace period say so
		args = append([]string{"-shutdown-grace", "0"}, args...)
	}
	go func() { done <- run(ctx, args, &logs, ready) }()
	select {
	case addr := <-ready:
		var once sync.Once
		var err error
		return addr, &logs, func() error { once.Do(func() { cancel(); err = <-done }); return err }
	case err := <-done:
		cancel()
		t.Fatalf("run: %v\n%s", err, logs.String())
	}
	return "", nil, nil
}

// -demo: a real TLS connection through the gateway, then a sidecar in each
// mode reaching the second datacenter's api through exactly the gateways
// the mode names, as counted by the gateways themselves.
func TestDemoRoutesARealTLSConnection(t *testing.T) {
	_, logs, stop := start(t, "-demo")
	consultest.WaitFor(t, time.Minute, "the demo's last mode", func() bool { return strings.Contains(logs.String(), `"demo: mode remote"`) })
	out := logs.String()
	assert.Contains(t, out, `echoed" server_name=api.default.dc1.internal.`)
	for mode, want := range map[string]string{
		"none":   `hops="[web sidecar api dc2]" through_dc1_gateway=0 through_dc2_gateway=0 `,
		"local":  `hops="[web sidecar gateway dc1 gateway dc2 api dc2]" through_dc1_gateway=1 through_dc2_gateway=1 `,
		"remote": `hops="[web sidecar gateway dc2 api dc2]" through_dc1_gateway=0 through_dc2_gateway=1 `,
	} {
		assert.Contains(t, out, `msg="demo: mode `+mode+`" `+want, mode)
	}
	assert.Equal(t, 3, strings.Count(out, "reply=ping\n")-1, "the first check and three modes echo:\n%s", out)
	assert.NotContains(t, out, "level=ERROR")
	require.NoError(t, stop())
	assert.Contains(t, logs.String(), "shutting down")
}

func TestFlagsRouteAndReject(t *testing.T) {
	backend, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, io.EOF }})
	require.NoError(t, err)
	defer backend.Close()
	accepted := make(chan string, 4)
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			accepted <- "yes"
			c.Close()
		}
	}()
	gw, logs, stop := start(t, "-service", "web="+backend.Addr().String(), "-remote-gateway", "dc2=127.0.0.1:1", "-peek-timeout", "1s")

	dial := func(name string) {
		c, err := net.Dial("tcp", gw)
		require.NoError(t, err)
		defer c.Close()
		tc := tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake()
	}
	dial(sni.ServiceSNI("web", "", "", "", "dc1", config.DefaultTrustDomain))
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the web backend was never dialled")
	}
	dial(sni.ServiceSNI("db", "", "", "", "dc1", config.DefaultTrustDomain))
	dial("www.example.com")
	require.NoError(t, stop())
	out := logs.String()
	assert.Contains(t, out, "reason=unknown-service")
	assert.Contains(t, out, "reason=foreign-trust-domain")
	assert.Len(t, accepted, 0, "rejected names are never dialled")
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-service", "api"},
		{"-service", "api=nohost"},
		{"-remote-gateway", "dc1=127.0.0.1:1"},
		{"-log-level", "loud"},
		{"-config", "/nonexistent/meshgate.hcl"},
		{"extra"},
	} {
		var logs bytes.Buffer
		err := run(context.Background(), append([]string{"-listen", "127.0.0.1:0"}, args...), &logs, nil)
		assert.Error(t, err, "%v", args)
	}
	// The exit statuses of every example binary: help and version 0, bad usage 2.
	for args, want := range map[string]int{"-h": 0, "-version": 0, "-nope": 2, "extra": 2, "-log-level loud": 2, "-l7-exports terminate": 2} {
		var logs bytes.Buffer
		err := run(context.Background(), strings.Fields(args), &logs, nil)
		assert.Equal(t, want, cli.ExitCode(&logs, "meshgateway", err), "%s: %s", args, logs.String())
	}
}

// With -consul the gateway routes from the live agent, registers itself as a
// mesh-gateway, and deregisters on shutdown.
func TestConsulMode(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	td := agent.TrustDomain()
	forwarded := meshService(t, agent, "web")

	gw, logs, stop := start(t, "-consul", "-wan-address", "127.0.5.5:443")
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	require.Contains(t, services, "mesh-gateway", logs.String())
	assert.Equal(t, api.ServiceKindMeshGateway, services["mesh-gateway"].Kind)
	assert.Equal(t, api.ServiceAddress{Address: "127.0.5.5", Port: 443}, services["mesh-gateway"].TaggedAddresses["wan"])

	c, err := tls.Dial("tcp", gw, &tls.Config{ServerName: sni.ServiceSNI("web", "", "", "", "dc1", td), InsecureSkipVerify: true})
	if err == nil {
		c.Close()
		t.Fatal("the echo backend is not TLS; the handshake must fail after being forwarded")
	}
	select {
	case <-forwarded:
	case <-time.After(10 * time.Second):
		t.Fatalf("the web sidecar was never dialled:\n%s", logs.String())
	}
	require.NoError(t, stop())
	services, err = agent.Client.Agent().Services()
	require.NoError(t, err)
	assert.NotContains(t, services, "mesh-gateway", "deregistered on shutdown")
}

// With -consul -expose-servers the gateway registers for WAN federation
// through mesh gateways (Consul's consul-wan-federation meta), as
// "consul connect envoy -gateway=mesh -register -expose-servers" does, and
// routes Consul's server names: a TLS handshake for the local server's name
// through it meets the real server, whose certificate carries that name.
// Without the flag the same name is refused.
func TestConsulExposeServers(t *testing.T) {
	agentTLS := consultest.NewTLS(t)
	agent := consultest.Start(t, consultest.Options{TLS: agentTLS, WANFederation: true})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	serverName := agent.NodeName + ".server.dc1.consul"
	handshake := func(gw string) error {
		c, err := tls.Dial("tcp", gw, &tls.Config{ServerName: serverName, RootCAs: agentTLS.CertPool(), NextProtos: []string{"consul/rpc-multi"}})
		if err == nil {
			c.Close()
		}
		return err
	}

	gw, logs, stop := start(t, "-consul")
	require.Error(t, handshake(gw))
	consultest.WaitFor(t, 10*time.Second, "the refusal to be logged", func() bool {
		return strings.Contains(logs.String(), "reason=wan-federation-off")
	})
	require.NoError(t, stop())

	gw, logs, stop = start(t, "-consul", "-expose-servers")
	services, err := agent.Client.Agent().Services()
	require.NoError(t, err)
	require.Contains(t, services, "mesh-gateway", logs.String())
	assert.Equal(t, "1", services["mesh-gateway"].Meta["consul-wan-federation"])
	assert.Contains(t, logs.String(), "wan_federation=true")
	require.NoError(t, handshake(gw), "the server's certificate, verified for %s, through the gateway\n%s", serverName, logs.String())
	require.NoError(t, stop())

	// Serving a registration made by someone else: the meta decides.
	require.NoError(t, agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindMeshGateway, ID: "gw-fed", Name: "mesh-gateway", Address: "127.0.0.1", Port: freePort(t),
		Meta: map[string]string{"consul-wan-federation": "1"}}))
	gw, logs, stop = start(t, "-consul", "-proxy-id", "gw-fed")
	require.NoError(t, handshake(gw), logs.String())
	require.NoError(t, stop())

	var out bytes.Buffer
	err = run(context.Background(), []string{"-consul", "-proxy-id", "gw-fed", "-expose-servers"}, &out, nil)
	assert.Equal(t, 2, cli.ExitCode(&out, "meshgateway", err), "the registration decides, not the flag: %s", out.String())
}

// -datacenter DC1 means dc1, as Consul lower-cases an agent's datacenter:
// the SNI names Consul's sidecars send (with dc1) route.
func TestUpperCaseDatacenterIsLowerCasedLikeConsul(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer backend.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := backend.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	gw, logs, stop := start(t, "-datacenter", "DC1", "-service", "web="+backend.Addr().String())
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	defer c.Close()
	tc := tls.Client(c, &tls.Config{ServerName: sni.ServiceSNI("web", "", "", "", "dc1", config.DefaultTrustDomain), InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	go tc.Handshake()
	select {
	case <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatalf("web was never dialled:\n%s", logs.String())
	}
	require.NoError(t, stop())
	assert.Contains(t, logs.String(), "datacenter=dc1")

	err = run(context.Background(), []string{"-listen", "127.0.0.1:0", "-datacenter", "DC1", "-remote-gateway", "dc1=127.0.0.1:1"}, io.Discard, nil)
	require.ErrorContains(t, err, "that is the local datacenter")
}

// A route to the gateway's own listener is refused at start, whether it is
// given by address or through a name, and by any of the flags or files.
func TestRouteToItselfIsRefusedAtStart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	port := addr[strings.LastIndex(addr, ":")+1:]
	ln.Close() // the gateway takes the port
	for _, args := range [][]string{
		{"-remote-gateway", "dc2=" + addr},
		{"-remote-gateway", "dc2=localhost:" + port},
		{"-service", "web=127.0.0.1:1," + addr},
	} {
		err := run(context.Background(), append([]string{"-listen", addr}, args...), io.Discard, nil)
		require.Error(t, err, "%q", args)
		assert.Contains(t, err.Error(), "is this gateway's own listener", "%q", args)
	}
	// Another port on the same host is fine.
	gw, _, stop := start(t, "-remote-gateway", "dc2=127.0.0.1:1")
	assert.NotEmpty(t, gw)
	require.NoError(t, stop())
}
