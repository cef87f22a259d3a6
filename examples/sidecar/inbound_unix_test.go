//go:build unix

package main

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// api's sidecar takes the mesh's connections on its public listener: a
// client with web's certificate reaches api's plain-TCP application over
// mTLS with api's identity while the intentions allow web, and is refused,
// with the agent's reason in the sidecar's log, once an intention denies it.
// A TCP health check's connection is not worth more than a Debug line.
func TestPublicListenerServesTheMeshAsTheIntentionsAllow(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	app, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { app.Close() })
	go echo.Serve(app, nil)
	public := freePort(t)
	require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: "api-sidecar-proxy", Name: "api-sidecar-proxy", Address: "127.0.0.1", Port: public,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "api", LocalServicePort: app.Addr().(*net.TCPAddr).Port}}))
	t.Setenv("CONSUL_HTTP_ADDR", dc1.HTTPAddr)
	logs := startSidecar(t, "-proxy-id", "api-sidecar-proxy")
	require.Contains(t, logs.String(), "public=127.0.0.1:")

	web := sidecartest.WatchCerts(t, dc1.Client, "web")
	apiID := sidecar.Identity{TrustDomain: dc1.TrustDomain(), Datacenter: "dc1", Service: "api"}
	// echoes sends 64 KiB as web through the public listener and reads
	// them back.
	echoes := func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", "127.0.0.1:"+strconv.Itoa(public), &tls.Config{
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return web.Certificate(), nil },
			InsecureSkipVerify:   true, // the SPIFFE identity is checked instead of a host name
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				return sidecar.VerifyIdentity(raw, web.Roots(), apiID)
			},
		})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		want := make([]byte, 64<<10)
		rand.Read(want)
		go c.Write(want)
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if !bytes.Equal(want, got) {
			t.Fatal("the echo differs from what was sent")
		}
		return nil
	}
	consultest.WaitFor(t, eventually, "web to reach api through api's sidecar", func() bool { return echoes() == nil })

	// A TCP health check (connect, close) is logged at Debug only.
	check, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(public))
	require.NoError(t, err)
	check.Close()
	consultest.WaitFor(t, eventually, "the health check's log line", func() bool {
		return strings.Contains(logs.String(), `level=DEBUG msg="sidecar: inbound connection refused"`)
	})
	assert.NotContains(t, logs.String(), `level=INFO msg="sidecar: inbound connection refused"`)

	_, _, err = dc1.Client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionDeny}}}, nil)
	require.NoError(t, err)
	consultest.WaitFor(t, eventually, "web to be refused", func() bool { return echoes() != nil })
	consultest.WaitFor(t, eventually, "the refusal in the log", func() bool {
		return strings.Contains(logs.String(), "inbound connection refused") && strings.Contains(logs.String(), "/svc/web may not connect to api")
	})
	assert.Contains(t, logs.String(), "intention", "the log gives the agent's reason")
}

// Upstreams added to the registration get a listener, and those dropped
// lose theirs, without a restart.
func TestListenersFollowTheRegistration(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	sidecartest.ServeNative(t, dc1.Client, "api", sidecartest.WatchCerts(t, dc1.Client, "api"))
	first, second := freePort(t), freePort(t)
	// register names api once without a datacenter and once with dc1:
	// Consul refuses two upstreams with the same destination.
	register := func(binds ...int) {
		t.Helper()
		var ups []api.Upstream
		for _, port := range binds {
			dc := ""
			if port == second {
				dc = "dc1"
			}
			ups = append(ups, api.Upstream{DestinationName: "api", Datacenter: dc, LocalBindPort: port})
		}
		require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Kind: api.ServiceKindConnectProxy, ID: "web-sidecar-proxy", Name: "web-sidecar-proxy", Port: freePort(t),
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", Upstreams: ups}}))
	}
	// echoes reports whether a byte sent on the local port comes back
	// from api.
	echoes := func(port int) bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("x"))
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		return string(got) == "x"
	}
	register(first)
	t.Setenv("CONSUL_HTTP_ADDR", dc1.HTTPAddr)
	logs := startSidecar(t, "-proxy-id", "web-sidecar-proxy")
	consultest.WaitFor(t, eventually, "api through the first upstream port", func() bool { return echoes(first) })

	register(first, second)
	consultest.WaitFor(t, eventually, "api through the added port", func() bool { return echoes(second) })
	assert.True(t, echoes(first))

	register(second)
	consultest.WaitFor(t, eventually, "the dropped port to be closed", func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(first))
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	assert.True(t, echoes(second))
	assert.Contains(t, logs.String(), `msg="sidecar: stopped listening" listener="upstream 127.0.0.1:`+strconv.Itoa(first)+`"`)
}
