package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With -consul -l7-exports terminate, the gateway reads its own
// certificate from the agent's gRPC TLS port (CONSUL_GRPC_ADDR=https://...,
// CONSUL_GRPC_CACERT) and terminates a peer's request to an exported http
// service: the peer's client sees the gateway's identity, the instance
// sees the client's in X-Forwarded-Client-Cert; what the terminator
// refuses is in the admin endpoint's metrics. The exporting agent is a
// production one (ACLs with default deny, only TLS ports), and the
// gateway's token is Consul's documented one with what peering and L7
// termination add: peering:read and mesh:write.
func TestTerminateServesAPeersHTTPExport(t *testing.T) {
	a := consultest.Start(t, consultest.Options{})
	b := consultest.Start(t, consultest.Options{ACL: true, TLS: consultest.NewTLS(t), TLSOnly: true})
	useAgentEnv(t, b.Env(b.Token(t, "gateway-l7", documentedPolicy+`peering = "read"`+"\n"+`mesh = "write"`)))
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	gw, logs, stop := start(t, "-consul", "-l7-exports", "terminate", "-admin", admin)
	defer stop()
	assert.Contains(t, logs.String(), "meshgateway: terminating L7 exports")
	assert.Contains(t, logs.String(), "grpc_addr=https://"+b.GRPCTLS)
	assert.NotContains(t, logs.String(), "mesh:write", "the token has it")

	tok, _, err := b.Client.Peerings().GenerateToken(context.Background(), api.PeeringGenerateTokenRequest{PeerName: "cluster-a"}, nil)
	require.NoError(t, err)
	_, _, err = a.Client.Peerings().Establish(context.Background(), api.PeeringEstablishRequest{PeerName: "cluster-b", PeeringToken: tok.PeeringToken}, nil)
	require.NoError(t, err)
	var peerRoots *x509.CertPool
	consultest.WaitFor(t, time.Minute, "the peering to be ACTIVE with B's roots", func() bool {
		p, _, err := a.Client.Peerings().Read(context.Background(), "cluster-b", nil)
		if err != nil || p == nil || p.State != api.PeeringStateActive || len(p.PeerCAPems) == 0 {
			return false
		}
		peerRoots = x509.NewCertPool()
		for _, pem := range p.PeerCAPems {
			peerRoots.AppendCertsFromPEM([]byte(pem))
		}
		return true
	})

	// api in B: an HTTP instance that says who called it.
	apiCerts := sidecartest.WatchCerts(t, b.Client, "api")
	srv := &http.Server{TLSConfig: apiCerts.ServerTLSConfig(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "client=%s xfcc=%s", r.TLS.PeerCertificates[0].URIs[0], r.Header.Get(sidecar.XFCCHeader))
	})}
	ln := consultest.Listen(t, "")
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	require.NoError(t, b.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "api", Address: "127.0.0.1",
		Port: ln.Addr().(*net.TCPAddr).Port, Connect: &api.AgentServiceConnect{Native: true}}))
	for _, e := range []api.ConfigEntry{
		&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"},
		&api.ExportedServicesConfigEntry{Name: "default", Services: []api.ExportedService{{Name: "api", Consumers: []api.ServiceConsumer{{Peer: "cluster-a"}}}}},
	} {
		_, _, err := b.Client.ConfigEntries().Set(e, nil)
		require.NoError(t, err)
	}

	// web in A, dialling B's gateway (remote mode).
	leaf, _, err := a.Client.Agent().ConnectCALeaf("web", nil)
	require.NoError(t, err)
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	require.NoError(t, err)
	gatewayID := "spiffe://" + b.TrustDomain() + "/gateway/mesh/dc/dc1"
	cfg := &tls.Config{ServerName: sni.PeeredServiceSNI("api", "", "", "cluster-a", b.TrustDomain()), Certificates: []tls.Certificate{cert},
		NextProtos: []string{"http/1.1"}, InsecureSkipVerify: true, // the SPIFFE identity is checked instead
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := sidecar.VerifyPeerChain(raw, peerRoots)
			if err == nil && (len(leaf.URIs) != 1 || leaf.URIs[0].String() != gatewayID) {
				err = fmt.Errorf("the server is %v, not B's gateway", leaf.URIs)
			}
			return err
		}}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", gw)
	}}}
	var body string
	consultest.WaitFor(t, time.Minute, "a request from A's web through B's terminating gateway", func() bool {
		resp, err := client.Get("https://api/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err == nil && resp.StatusCode == http.StatusOK
	})
	assert.True(t, strings.HasPrefix(body, "client="+gatewayID+" xfcc=By="+gatewayID+";"), body)
	assert.True(t, strings.HasSuffix(body, ";URI=spiffe://"+a.TrustDomain()+"/ns/default/dc/dc1/svc/web"), body)

	// A CONNECT finds no route (404), and is counted by its reason.
	c, err := tls.Dial("tcp", gw, cfg)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	_, err = io.WriteString(c, "CONNECT billing.internal:443 HTTP/1.1\r\nHost: billing.internal:443\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	code, metrics := getStatus("http://" + admin + "/metrics")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, metrics, `meshgate_l7_refused_total{reason="connect"} 1`+"\n")
}
