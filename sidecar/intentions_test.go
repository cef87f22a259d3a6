package sidecar_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Intentions decide as Consul's sidecars do: the most precise source that
// names the request's source, then its first matching permission, else the
// default.
func TestIntentionsDecideAsConsulDoes(t *testing.T) {
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api", Sources: []*api.SourceIntention{
		{Name: "web", Peer: "cluster-a", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/", Methods: []string{"GET"}}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: "/upload",
				Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Role", Exact: "WRITER", IgnoreCase: true}}}},
		}},
		{Name: "*", Peer: "cluster-a", Action: api.IntentionActionDeny},
		{Name: "web", Action: api.IntentionActionAllow},
		{Name: "jobs", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, JWT: &api.IntentionJWTRequirement{}},
		}},
	}}
	peerWeb := sidecar.RequestSource{Service: "web", Namespace: "default", Peer: "cluster-a"}
	for _, tc := range []struct {
		what         string
		src          sidecar.RequestSource
		method, path string
		header       map[string]string
		deflt, want  bool
		why          string
	}{
		{"the peer's web reads", peerWeb, "GET", "/items", nil, false, true, "permission 2: allow"},
		{"the peer's web may not write", peerWeb, "POST", "/items", nil, false, false, "no permission matches POST /items: the default, deny"},
		{"... unless the default allows", peerWeb, "POST", "/items", nil, true, true, "the default, allow"},
		{"a deny before an allow", peerWeb, "GET", "/admin/users", nil, true, false, "permission 1: deny"},
		{"a header, case ignored", peerWeb, "PUT", "/upload", map[string]string{"X-Role": "writer"}, false, true, "permission 3: allow"},
		{"another of the peer's services: the wildcard", sidecar.RequestSource{Service: "billing", Peer: "cluster-a"}, "GET", "/", nil, true, false, "intention from *: deny"},
		{"the local web: its own source", sidecar.RequestSource{Service: "web"}, "DELETE", "/admin", nil, false, true, "intention from web: allow"},
		{"web of another peer: none", sidecar.RequestSource{Service: "web", Peer: "cluster-c"}, "GET", "/", nil, false, false, "no intention names web of peer cluster-c"},
		{"a JWT is not checked, so it never matches", sidecar.RequestSource{Service: "jobs"}, "GET", "/", nil, false, false, "no permission matches"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, nil)
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			ok, why := sidecar.Authorize(entry, tc.src, r, tc.deflt)
			assert.Equal(t, tc.want, ok, why)
			assert.Contains(t, why, tc.why)
		})
	}
	ok, why := sidecar.Authorize(nil, peerWeb, httptest.NewRequest("GET", "/", nil), false)
	assert.False(t, ok)
	assert.Contains(t, why, "no intention names web of peer cluster-a")
}

// The source of a request is the client certificate's service, unless the
// client is a local mesh gateway: then the first URI of the
// X-Forwarded-Client-Cert it set, in a peer's trust domain. Any other
// client's header is ignored.
func TestSourceOfARequest(t *testing.T) {
	const local, peerTD = "aaaaaaaa-0000-4000-8000-000000000001.consul", "bbbbbbbb-0000-4000-8000-000000000002.consul"
	v := &mesh.View{TrustDomain: local, Peers: map[string]mesh.Peer{"cluster-b": {Name: "cluster-b", TrustDomain: peerTD}}}
	state := func(uri string) *tls.ConnectionState {
		u, err := url.Parse(uri)
		require.NoError(t, err)
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}
	}
	gateway := "spiffe://" + local + "/gateway/mesh/dc/dc1"
	xfcc := func(uri string) http.Header {
		return http.Header{sidecar.XFCCHeader: {"By=" + gateway + ";Hash=00;Subject=\"\";URI=" + uri + ",By=x;URI=spiffe://" + peerTD + "/ns/default/dc/dc1/svc/other"}}
	}
	for _, tc := range []struct {
		what, client string
		header       http.Header
		want         sidecar.RequestSource
		err          string
	}{
		{"a local service", "spiffe://" + local + "/ns/team/dc/dc1/svc/web", xfcc("spiffe://" + peerTD + "/ns/default/dc/dc9/svc/admin"),
			sidecar.RequestSource{Service: "web", Namespace: "team", Partition: "default"}, ""},
		{"a peer's service through the local gateway", gateway, xfcc("spiffe://" + peerTD + "/ap/part/ns/default/dc/dc9/svc/web"),
			sidecar.RequestSource{Service: "web", Namespace: "default", Partition: "part", Peer: "cluster-b", Via: gateway}, ""},
		{"a gateway that forwards no identity", gateway, nil, sidecar.RequestSource{}, "forwarded no client URI"},
		{"a gateway that forwards a stranger", gateway, xfcc("spiffe://cccccccc-0000-4000-8000-000000000003.consul/ns/default/dc/dc1/svc/web"),
			sidecar.RequestSource{}, "whose trust domain is no peer's"},
		{"another trust domain's client", "spiffe://" + peerTD + "/ns/default/dc/dc1/svc/web", nil, sidecar.RequestSource{}, "is not in trust domain"},
		{"not a service", "spiffe://" + local + "/agent/client/dc/dc1/id/x", nil, sidecar.RequestSource{}, "is not a service's SPIFFE ID"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			got, err := sidecar.SourceOf(state(tc.client), tc.header, v)
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	_, err := sidecar.SourceOf(nil, nil, v)
	assert.ErrorContains(t, err, "without a client certificate")
}
