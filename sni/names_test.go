package sni

import (
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"testing/quick"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const td = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

// Consul's published examples (DOMAIN.md, agent/connect/sni.go).
func TestBuildersMatchConsulExamples(t *testing.T) {
	cases := []struct{ got, want string }{
		{ServiceSNI("api", "", "default", "", "dc1", td), "api.default.dc1.internal." + td},
		{ServiceSNI("api", "", "", "", "dc1", td), "api.default.dc1.internal." + td},
		{ServiceSNI("api", "", "", "default", "dc1", td), "api.default.dc1.internal." + td},
		{ServiceSNI("api", "v2", "default", "", "dc1", td), "v2.api.default.dc1.internal." + td},
		{ServiceSNI("api", "v2", "default", "part1", "dc1", td), "v2.api.default.part1.dc1.internal-v1." + td},
		{ServiceSNI("api", "", "ns1", "part1", "dc1", td), "api.ns1.part1.dc1.internal-v1." + td},
		{PeeredServiceSNI("api", "billing", "default", "webstuff", td), "api.billing.default.webstuff.external." + td},
		{PeeredServiceSNI("api", "", "", "webstuff", td), "api.default.default.webstuff.external." + td},
		{QuerySNI("magicquery", "dc1", td), "magicquery.default.dc1.query." + td},
		{GatewaySNI("dc2", "", td), "dc2.internal." + td},
		{GatewaySNI("dc2", "default", td), "dc2.internal." + td},
		{GatewaySNI("dc2", "part1", td), "part1.dc2.internal-v1." + td},
		{PeeringServerSNI("dc1", td), "server.dc1.peering." + td},
		{ServerSNI("dc2", "", "consul"), "server.dc2.consul"},
		{ServerSNI("dc2", "node1", "consul."), "node1.server.dc2.consul"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, c.got)
	}
}

func TestParseNameExamples(t *testing.T) {
	cases := []struct {
		in   string
		want Name
	}{
		{"api.default.dc1.internal." + td, Name{Kind: KindService, Service: "api", Namespace: "default", Partition: "default", Datacenter: "dc1", TrustDomain: td}},
		{"v2.api.default.dc1.internal." + td, Name{Kind: KindService, Service: "api", Subset: "v2", Namespace: "default", Partition: "default", Datacenter: "dc1", TrustDomain: td}},
		{"v2.api.default.part1.dc1.internal-v1." + td, Name{Kind: KindService, Service: "api", Subset: "v2", Namespace: "default", Partition: "part1", Datacenter: "dc1", TrustDomain: td}},
		{"internal.default.dc1.internal." + td, Name{Kind: KindService, Service: "internal", Namespace: "default", Partition: "default", Datacenter: "dc1", TrustDomain: td}},
		{"api.billing.default.webstuff.external." + td, Name{Kind: KindPeeredService, Service: "api", Namespace: "billing", Partition: "default", Peer: "webstuff", TrustDomain: td}},
		{"magicquery.default.dc1.query." + td, Name{Kind: KindQuery, Query: "magicquery", Namespace: "default", Datacenter: "dc1", TrustDomain: td}},
		{"dc2.internal." + td, Name{Kind: KindGateway, Datacenter: "dc2", Partition: "default", TrustDomain: td}},
		{"part1.dc2.internal-v1." + td, Name{Kind: KindGateway, Datacenter: "dc2", Partition: "part1", TrustDomain: td}},
		{"server.dc1.peering." + td, Name{Kind: KindPeeringServer, Datacenter: "dc1", TrustDomain: td}},
	}
	for _, c := range cases {
		got, err := ParseName(c.in, td)
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
		assert.Equal(t, c.in, got.String())
	}
}

func TestParseNameErrors(t *testing.T) {
	cases := []struct {
		in, mention string
		want        error
	}{
		{"api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul", "5fcd4b81", ErrForeignTrustDomain},
		{"api.default.dc1.internal.consul", "api.default.dc1.internal.consul", ErrForeignTrustDomain},
		{"example.com", "example.com", ErrForeignTrustDomain},
		{td, td, ErrForeignTrustDomain},
		{"." + td, "no labels", ErrMalformedName},
		{"default.dc1.internal.x." + td, `"x"`, ErrMalformedName},
		{"api..dc1.internal." + td, "empty label", ErrMalformedName},
		{".api.default.dc1.internal." + td, "empty label", ErrMalformedName},
		{"default.dc1.internal." + td, "2 labels", ErrMalformedName},
		{"a.b.c.d.e.f.internal." + td, "too many labels", ErrMalformedName},
		{"api.default.dc1.internal-v1." + td, "3 labels", ErrMalformedName},
		{"api.default.default.dc1.internal-v1." + td, "partition", ErrMalformedName},
		{"api.default.webstuff.external." + td, "want 4", ErrMalformedName},
		{"q.ns1.dc1.query." + td, `"ns1"`, ErrMalformedName},
		{"client.dc1.peering." + td, "server", ErrMalformedName},
		{"api.default.dc1.interna1." + td, `"interna1"`, ErrMalformedName},
	}
	for _, c := range cases {
		_, err := ParseName(c.in, td)
		require.ErrorIs(t, err, c.want, c.in)
		assert.Contains(t, err.Error(), c.mention, c.in)
	}
	_, err := ParseName("api.default.dc1.internal."+td, "")
	require.ErrorIs(t, err, ErrForeignTrustDomain)
}

func TestParseNameTrustDomainCaseInsensitive(t *testing.T) {
	n, err := ParseName("api.default.dc1.internal."+strings.ToUpper(td), td)
	require.NoError(t, err)
	assert.Equal(t, "api", n.Service)
}

// label generates a non-empty DNS-ish label without dots, sometimes one of the
// keywords so that names like "internal.default.dc1.internal.<td>" are tried.
type label string

func (label) Generate(r *rand.Rand, _ int) reflect.Value {
	keywords := []string{"internal", "internal-v1", "external", "query", "peering", "server", "default"}
	if r.Intn(5) == 0 {
		return reflect.ValueOf(label(keywords[r.Intn(len(keywords))]))
	}
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789-_"
	b := make([]byte, 1+r.Intn(20))
	for i := range b {
		b[i] = chars[r.Intn(len(chars))]
	}
	return reflect.ValueOf(label(b))
}

func TestRoundTripProperty(t *testing.T) {
	cfg := &quick.Config{MaxCount: 2000}
	check := func(f any) {
		t.Helper()
		require.NoError(t, quick.Check(f, cfg))
	}
	check(func(svc, subset, ns, part, dc label, withSubset, defaultPart bool) bool {
		s, p := string(subset), string(part)
		if !withSubset {
			s = ""
		}
		if defaultPart || p == "default" {
			p = "default"
		}
		n, err := ParseName(ServiceSNI(string(svc), s, string(ns), p, string(dc), td), td)
		return err == nil && n == Name{Kind: KindService, Service: string(svc), Subset: s, Namespace: string(ns), Partition: p, Datacenter: string(dc), TrustDomain: td}
	})
	check(func(svc, ns, part, peer label) bool {
		n, err := ParseName(PeeredServiceSNI(string(svc), string(ns), string(part), string(peer), td), td)
		return err == nil && n == Name{Kind: KindPeeredService, Service: string(svc), Namespace: string(ns), Partition: string(part), Peer: string(peer), TrustDomain: td}
	})
	check(func(q, dc label) bool {
		n, err := ParseName(QuerySNI(string(q), string(dc), td), td)
		return err == nil && n == Name{Kind: KindQuery, Query: string(q), Namespace: "default", Datacenter: string(dc), TrustDomain: td}
	})
	check(func(dc, part label) bool {
		n, err := ParseName(GatewaySNI(string(dc), string(part), td), td)
		return err == nil && n == Name{Kind: KindGateway, Datacenter: string(dc), Partition: string(part), TrustDomain: td}
	})
	check(func(dc label) bool {
		n, err := ParseName(PeeringServerSNI(string(dc), td), td)
		return err == nil && n == Name{Kind: KindPeeringServer, Datacenter: string(dc), TrustDomain: td}
	})
}

func TestBuildersNeverPanicOnEmptyParts(t *testing.T) {
	name := PeeredServiceSNI("api", "", "", "", td)
	_, err := ParseName(name, td)
	require.ErrorIs(t, err, ErrMalformedName)
}

func TestParseNameAllocations(t *testing.T) {
	name := "v2.api.default.part1.dc1.internal-v1." + td
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseName(name, td); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

func TestParseServerSNIExamples(t *testing.T) {
	cases := []struct {
		in, domain string
		want       ConsulServer
	}{
		{"server.dc1.consul", "consul", ConsulServer{Datacenter: "dc1", Domain: "consul"}},
		{"server.dc1.consul", "", ConsulServer{Datacenter: "dc1", Domain: "consul"}},
		{"node-dc1.server.dc1.consul", "consul.", ConsulServer{Node: "node-dc1", Datacenter: "dc1", Domain: "consul"}},
		{"ip-10-0-1-2.ec2.internal.server.us-east-1.consul", "consul", ConsulServer{Node: "ip-10-0-1-2.ec2.internal", Datacenter: "us-east-1", Domain: "consul"}},
		{"s1.server.dc2.mesh.example.com", "mesh.example.com", ConsulServer{Node: "s1", Datacenter: "dc2", Domain: "mesh.example.com"}},
		{"server.server.server.consul", "consul", ConsulServer{Node: "server", Datacenter: "server", Domain: "consul"}},
		{"s1.server.dc1.CONSUL", "consul", ConsulServer{Node: "s1", Datacenter: "dc1", Domain: "CONSUL"}},
	}
	for _, c := range cases {
		got, err := ParseServerSNI(c.in, c.domain)
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
		assert.Equal(t, c.in, got.String(), c.in)
	}
}

func TestParseServerSNIRefusesOtherNames(t *testing.T) {
	cases := []struct{ in, mention string }{
		{"api.default.dc1.internal." + td, "server.<datacenter>"},
		{"server.dc1.peering." + td, "server.<datacenter>"},
		{"dc2.internal." + td, "server.<datacenter>"},
		{"server.dc1.example.com", `domain "consul"`},
		{"consul", `domain "consul"`},
		{".consul", "server.<datacenter>"},
		{"server..consul", "server.<datacenter>"},
		{"dc1.consul", "server.<datacenter>"},
		{"client.dc1.consul", "server.<datacenter>"},
		{".server.dc1.consul", "empty label"},
		{"a..b.server.dc1.consul", "empty label"},
		{"xserver.dc1.consul", "server.<datacenter>"},
		{"server.dc1.xconsul", `domain "consul"`},
		{"*.server.dc1.consul", `node name "*"`},
	}
	for _, c := range cases {
		_, err := ParseServerSNI(c.in, "consul")
		require.ErrorIs(t, err, ErrNotServerSNI, c.in)
		assert.Contains(t, err.Error(), c.mention, c.in)
		assert.Contains(t, err.Error(), c.in, "the error names the value")
	}
}

func TestServerSNIRoundTripProperty(t *testing.T) {
	err := quick.Check(func(node1, node2, dc label, withNode, dotted bool) bool {
		node := ""
		if withNode {
			node = string(node1)
			if dotted {
				node += "." + string(node2)
			}
		}
		n, err := ParseServerSNI(ServerSNI(string(dc), node, "consul"), "consul")
		return err == nil && n == ConsulServer{Node: node, Datacenter: string(dc), Domain: "consul"}
	}, &quick.Config{MaxCount: 2000})
	require.NoError(t, err)
	assert.Equal(t, "server.dc1.consul", ServerSNI("dc1", "*", ""), `"*" is any server, as in Consul`)
}

func TestParseServerSNIAllocations(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseServerSNI("node-dc1.server.dc1.consul", "consul"); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// A router asks ServerSNIOf of every name it sees, most of them services'
// names: it answers without allocating either way, and as ParseServerSNI
// does.
func TestServerSNIOfAgreesAndDoesNotAllocate(t *testing.T) {
	names := []string{"node-dc1.server.dc1.consul", "server.dc2.consul", "api.default.dc1.internal." + td,
		"server.dc1.peering." + td, "example.com", "*.server.dc1.consul", ".server.dc1.consul", "SERVER.DC1.CONSUL"}
	for _, name := range names {
		want, err := ParseServerSNI(name, "consul")
		got, ok := ServerSNIOf(name, "consul")
		assert.Equal(t, err == nil, ok, name)
		assert.Equal(t, want, got, name)
		allocs := testing.AllocsPerRun(100, func() { ServerSNIOf(name, "consul") })
		assert.Zero(t, allocs, name)
	}
}

// One rule for case: every part of a name, keywords included, is matched
// without regard to ASCII case, as Envoy matches the server names of
// Consul's filter chains (lower-cased since Envoy 1.18); the parts come back
// as written.
func TestNamesMatchWithoutRegardToCase(t *testing.T) {
	n, err := ParseServerSNI("SERVER.DC1.CONSUL", "consul")
	require.NoError(t, err)
	assert.Equal(t, ConsulServer{Datacenter: "DC1", Domain: "CONSUL"}, n)
	n, err = ParseServerSNI("Node-1.Server.dc1.consul", "consul")
	require.NoError(t, err)
	assert.Equal(t, ConsulServer{Node: "Node-1", Datacenter: "dc1", Domain: "consul"}, n)
	for _, name := range []string{
		strings.ToUpper("api.default.dc1.internal." + td),
		"api.default.part1.dc1.INTERNAL-V1." + td,
		"api.default.default.peer.External." + td,
		"q.DEFAULT.dc1.QUERY." + td,
		"SERVER.dc1.PEERING." + td,
	} {
		got, err := ParseName(name, td)
		require.NoError(t, err, name)
		assert.True(t, strings.EqualFold(got.String(), name), "%s rebuilds as %s", name, got.String())
	}
	_, err = ParseName("api.DEFAULT.dc1.internal-v1."+td, td)
	assert.ErrorIs(t, err, ErrMalformedName, "the default partition is written with internal, whatever its case")
}
