package sni

import (
	"context"
	"strings"
	"testing"
)

func addCorpusSeeds(f *testing.F) {
	for _, e := range loadCorpus(f) {
		f.Add(e.bytes)
		f.Add(resplit(f, e.bytes, 100))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(hugeHello()[:64])
}

// FuzzRead feeds arbitrary bytes through Reader.Read, a few bytes per read.
// Whatever the input, Read must return, must not panic, and must return every
// byte it consumed.
func FuzzRead(f *testing.F) {
	addCorpusSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		chunk := 1
		if len(in) > 0 {
			chunk = 1 + int(in[len(in)-1])%64
		}
		conn := &trickleConn{data: in, chunk: chunk}
		var h ClientHello
		got, err := Reader{MaxSize: 8 << 10}.Read(context.Background(), conn, nil, &h)
		if len(got) != len(in)-len(conn.data) {
			t.Fatalf("returned %d bytes, consumed %d", len(got), len(in)-len(conn.data))
		}
		if err == nil && h.ServerName != "" {
			if _, err := checkHostName([]byte(h.ServerName)); err != nil {
				t.Fatalf("accepted a name the policy rejects: %v", err)
			}
		}
	})
}

// FuzzParseName checks that every name ParseName accepts is rebuilt, up to
// ASCII case.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{
		"api.default.dc1.internal." + td, "v2.api.default.part1.dc1.internal-v1." + td,
		"api.billing.default.webstuff.external." + td, "magicquery.default.dc1.query." + td,
		"dc2.internal." + td, "server.dc1.peering." + td, "a..b.internal." + td,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		n, err := ParseName(name, td)
		if err != nil {
			return
		}
		if got := n.String(); !strings.EqualFold(got, name) {
			t.Fatalf("ParseName(%q) = %+v, which rebuilds as %q", name, n, got)
		}
	})
}

// FuzzParseServerSNI checks that every name ParseServerSNI accepts is
// rebuilt, up to ASCII case, and that none of them is also a name of the
// trust domain.
func FuzzParseServerSNI(f *testing.F) {
	for _, s := range []string{"server.dc1.consul", "node-dc1.server.dc1.consul", "a.b.server.dc2.consul",
		"server.dc1.peering." + td, "api.default.dc1.internal." + td, "..server.dc1.consul"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		n, err := ParseServerSNI(name, "consul")
		if err != nil {
			return
		}
		if got := n.String(); !strings.EqualFold(got, name) {
			t.Fatalf("ParseServerSNI(%q) = %+v, which rebuilds as %q", name, n, got)
		}
		if _, err := ParseName(name, td); err == nil {
			t.Fatalf("%q parses both as a server name and as a name of trust domain %q", name, td)
		}
	})
}
