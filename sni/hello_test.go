package sni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var errEOF = io.EOF

func TestCorpusRealClients(t *testing.T) {
	clients := map[string]bool{}
	for _, e := range loadCorpus(t) {
		clients[e.Client] = true
		for _, size := range []int{maxPlaintextRecord, 512, 100, 7, 1} {
			for _, chunk := range []int{1 << 16, 1460, 3, 1} {
				t.Run(fmt.Sprintf("%s/record%d/read%d", e.Client, size, chunk), func(t *testing.T) {
					raw := resplit(t, e.bytes, size)
					conn := &trickleConn{data: raw, chunk: chunk}
					var h ClientHello
					got, err := Reader{}.Read(context.Background(), conn, nil, &h)
					require.NoError(t, err)
					assert.Equal(t, raw, got, "every byte read must be returned for replay")
					assert.Equal(t, e.ServerName, h.ServerName)
					if e.ALPN != nil {
						assert.Equal(t, e.ALPN, h.ALPN)
					}
					assert.True(t, conn.deadline.IsZero(), "deadline must be cleared")
				})
			}
		}
	}
	for _, want := range []string{"openssl-tls13", "openssl-tls12", "curl", "go-crypto-tls"} {
		assert.True(t, clients[want], "corpus lacks %s", want)
	}
}

func TestCorpusVersionsAndECH(t *testing.T) {
	for _, e := range loadCorpus(t) {
		var h ClientHello
		_, err := Reader{}.Read(context.Background(), &trickleConn{data: e.bytes, chunk: 1 << 16}, nil, &h)
		require.NoError(t, err, e.Client)
		if e.Client == "openssl-tls12" {
			assert.Empty(t, h.SupportedVersions, e.Client)
			assert.Equal(t, uint16(0x0303), h.MaxVersion(), e.Client)
		} else {
			assert.Contains(t, h.SupportedVersions, uint16(0x0304), e.Client)
			assert.Equal(t, uint16(0x0304), h.MaxVersion(), e.Client)
		}
		for _, v := range h.SupportedVersions {
			assert.False(t, isGREASE(v), "%s: GREASE %#04x reported", e.Client, v)
		}
		if e.Client == "chromium" {
			assert.True(t, h.ECH, "Chromium sends a (GREASE) ECH extension")
			assert.Greater(t, len(e.bytes), 1500, "Chromium's ML-KEM hello spans more than one MTU")
		}
		if e.Client == "openssl-tls13" {
			assert.False(t, h.ECH)
		}
	}
}

func TestServerNamePolicy(t *testing.T) {
	long := strings.Repeat("a", 70) + ".default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
	cases := []struct {
		name    string
		spec    helloSpec
		want    string
		wantErr error
	}{
		{"plain", helloSpec{names: [][]byte{[]byte("api.example")}}, "api.example", nil},
		{"upper case is lowered", helloSpec{names: [][]byte{[]byte("API.Default.DC1.internal.X.consul")}}, "api.default.dc1.internal.x.consul", nil},
		{"underscore allowed", helloSpec{names: [][]byte{[]byte("my_svc.default")}}, "my_svc.default", nil},
		{"long names allowed", helloSpec{names: [][]byte{[]byte(long)}}, long, nil},
		{"no extension", helloSpec{}, "", nil},
		{"only unknown name types", helloSpec{otherNames: true, names: [][]byte{}}, "", nil},
		{"unknown type beside host_name", helloSpec{otherNames: true, names: [][]byte{[]byte("a.b")}}, "a.b", nil},
		{"trailing dot", helloSpec{names: [][]byte{[]byte("api.example.")}}, "", ErrInvalidServerName},
		{"empty label", helloSpec{names: [][]byte{[]byte("api..example")}}, "", ErrInvalidServerName},
		{"leading dot", helloSpec{names: [][]byte{[]byte(".example")}}, "", ErrInvalidServerName},
		{"IPv4 literal", helloSpec{names: [][]byte{[]byte("127.0.0.1")}}, "", ErrInvalidServerName},
		{"IPv6 literal", helloSpec{names: [][]byte{[]byte("::1")}}, "", ErrInvalidServerName},
		{"two host names", helloSpec{names: [][]byte{[]byte("a.b"), []byte("c.d")}}, "", ErrInvalidServerName},
		{"NUL byte", helloSpec{names: [][]byte{[]byte("a\x00.b")}}, "", ErrInvalidServerName},
		{"space", helloSpec{names: [][]byte{[]byte("a b")}}, "", ErrInvalidServerName},
		{"empty host name", helloSpec{names: [][]byte{{}}}, "", ErrMalformed},
		{"repeated extension", helloSpec{names: [][]byte{[]byte("a.b")}, dupSNI: true}, "", ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := ClientHello{ServerName: "stale"}
			err := ParseClientHello(buildHello(c.spec), &h)
			if c.wantErr != nil {
				require.ErrorIs(t, err, c.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, h.ServerName)
		})
	}
}

func TestInvalidNameErrorNamesTheValue(t *testing.T) {
	err := ParseClientHello(buildHello(helloSpec{names: [][]byte{[]byte("api.example.")}}), &ClientHello{})
	require.ErrorIs(t, err, ErrInvalidServerName)
	assert.Contains(t, err.Error(), `"api.example."`)
}

func TestALPNVersionsECH(t *testing.T) {
	var h ClientHello
	msg := buildHello(helloSpec{names: [][]byte{[]byte("a.b")}, alpn: []string{"h2", "http/1.1"}, versions: []uint16{0x3a3a, 0x0304, 0x0303}, ech: true})
	require.NoError(t, ParseClientHello(msg, &h))
	assert.Equal(t, []string{"h2", "http/1.1"}, h.ALPN)
	assert.Equal(t, []uint16{0x0304, 0x0303}, h.SupportedVersions)
	assert.True(t, h.ECH)
	// Reusing h for a hello without those extensions must clear them.
	require.NoError(t, ParseClientHello(buildHello(helloSpec{}), &h))
	assert.Empty(t, h.ALPN)
	assert.Empty(t, h.SupportedVersions)
	assert.False(t, h.ECH)
	assert.Empty(t, h.ServerName)
}

func TestReadErrors(t *testing.T) {
	good := recordsOf(buildHello(helloSpec{names: [][]byte{[]byte("a.b")}}), 1<<14)
	withRecordLen := func(n int) []byte {
		b := append([]byte(nil), good...)
		b[3], b[4] = byte(n>>8), byte(n)
		return b
	}
	big := hugeHello()
	notHello := append([]byte(nil), good...)
	notHello[5] = 2 // ServerHello
	cases := []struct {
		name    string
		in      []byte
		max     int
		wantErr error
	}{
		{"plain HTTP", []byte("GET / HTTP/1.1\r\nHost: a.b\r\n\r\n"), 0, ErrNotTLS},
		{"one byte of HTTP", []byte("G"), 0, ErrNotTLS},
		{"SSLv2-compatible hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, 0, ErrNotTLS},
		{"garbage", []byte{0x00, 0x01, 0x02, 0x03, 0x04, 0x05}, 0, ErrNotTLS},
		{"bad major version", []byte{0x16, 0x02, 0x00, 0x00, 0x05}, 0, ErrNotTLS},
		{"oversized record length", withRecordLen(0xffff), 0, ErrMalformed},
		{"zero-length record", withRecordLen(0), 0, ErrMalformed},
		{"not a ClientHello", notHello, 0, ErrMalformed},
		{"alert between fragments", append(recordsOf(buildHello(helloSpec{})[:10], 10), 21, 3, 3, 0, 2, 2, 40), 0, ErrMalformed},
		{"over the size limit", big, 0, ErrTooLarge},
		{"over a small limit", good, 32, ErrTooLarge},
		{"truncated", good[:len(good)-3], 0, io.ErrUnexpectedEOF},
		{"empty", nil, 0, io.EOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := &trickleConn{data: c.in, chunk: 1 << 16}
			got, err := Reader{MaxSize: c.max}.Read(context.Background(), conn, nil, &ClientHello{})
			require.ErrorIs(t, err, c.wantErr)
			// Nothing read is lost, even on error.
			assert.Equal(t, len(c.in)-len(conn.data), len(got))
		})
	}
}

// Gatherer, fed the bytes as a non-blocking socket would hand them over,
// accepts and refuses what Reader does, with the same errors, and finds
// the same name in a hello split over many records.
func TestGathererAgreesWithReader(t *testing.T) {
	good := recordsOf(buildHello(helloSpec{names: [][]byte{[]byte("a.b")}}), 1<<14)
	split := recordsOf(buildHello(helloSpec{names: [][]byte{[]byte("split.example")}, alpn: []string{"h2"}}), 7)
	notHello := append([]byte(nil), good...)
	notHello[5] = 2
	cases := []struct {
		name     string
		in       []byte
		max      int
		wantErr  error
		wantName string
	}{
		{"one record", good, 0, nil, "a.b"},
		{"records of 7 bytes", split, 0, nil, "split.example"},
		{"plain HTTP", []byte("GET / HTTP/1.1\r\n"), 0, ErrNotTLS, ""},
		{"not a ClientHello", notHello, 0, ErrMalformed, ""},
		{"over the size limit", hugeHello(), 0, ErrTooLarge, ""},
		{"over a small limit", good, 32, ErrTooLarge, ""},
		{"truncated", good[:len(good)-3], 0, io.ErrUnexpectedEOF, ""},
		{"empty", nil, 0, io.EOF, ""},
	}
	for _, c := range cases {
		for _, chunk := range []int{1, 1000, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d-byte reads", c.name, chunk), func(t *testing.T) {
				g := Gatherer{MaxSize: c.max}
				defer g.Reset()
				var data []byte
				var msg []byte
				var err error
				for rest := c.in; msg == nil && err == nil; {
					if len(rest) == 0 {
						err = g.Closed(data)
						break
					}
					n := min(chunk, len(rest))
					data, rest = append(data, rest[:n]...), rest[n:]
					var need int
					msg, need, err = g.Next(data)
					if err == nil && msg == nil {
						require.Greater(t, need, len(data), "asks for more than it has")
					}
				}
				if c.wantErr != nil {
					require.ErrorIs(t, err, c.wantErr)
					_, rerr := Reader{MaxSize: c.max}.Read(context.Background(), &trickleConn{data: c.in, chunk: chunk}, nil, &ClientHello{})
					require.ErrorIs(t, rerr, c.wantErr, "Reader's error for the same bytes")
					return
				}
				require.NoError(t, err)
				var h ClientHello
				require.NoError(t, ParseClientHello(msg, &h))
				assert.Equal(t, c.wantName, h.ServerName)
			})
		}
	}
}

func TestOversizeRejectedBeforeReadingIt(t *testing.T) {
	big := hugeHello()
	conn := &trickleConn{data: big, chunk: 1 << 16}
	_, err := Reader{}.Read(context.Background(), conn, nil, &ClientHello{})
	require.ErrorIs(t, err, ErrTooLarge)
	assert.Greater(t, len(conn.data), 50<<10, "the reader must stop at the handshake header, not read the whole body")
}

// hugeHello frames a handshake message that claims 70 KiB, over records.
func hugeHello() []byte {
	const n = 70 << 10
	msg := append([]byte{typeClientHello, n >> 16, n >> 8 & 0xff, n & 0xff}, make([]byte, n)...)
	return recordsOf(msg, 1<<14)
}

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestReadTCPSplitAcrossSegments(t *testing.T) {
	e := loadCorpus(t)[0]
	for _, c := range loadCorpus(t) {
		if c.Client == "chromium" {
			e = c
		}
	}
	raw := resplit(t, e.bytes, 300)
	client, server := tcpPair(t)
	client.(*net.TCPConn).SetNoDelay(true)
	go func() {
		for i := 0; i < len(raw); i += 97 {
			client.Write(raw[i:min(i+97, len(raw))])
			time.Sleep(time.Millisecond)
		}
		client.Write([]byte("early data follows"))
	}()
	var h ClientHello
	got, err := Reader{}.Read(context.Background(), server, nil, &h)
	require.NoError(t, err)
	assert.Equal(t, e.ServerName, h.ServerName)
	assert.Equal(t, raw, got[:len(raw)])
}

func TestReadTimeouts(t *testing.T) {
	t.Run("silent client", func(t *testing.T) {
		_, server := tcpPair(t)
		_, err := Reader{Timeout: 50 * time.Millisecond}.Read(context.Background(), server, nil, &ClientHello{})
		require.ErrorIs(t, err, ErrTimeout)
	})
	t.Run("slow client", func(t *testing.T) {
		client, server := tcpPair(t)
		raw := recordsOf(buildHello(helloSpec{names: [][]byte{[]byte("a.b")}}), 1<<14)
		go func() {
			for _, b := range raw {
				if _, err := client.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		got, err := Reader{Timeout: 100 * time.Millisecond}.Read(context.Background(), server, nil, &ClientHello{})
		require.ErrorIs(t, err, ErrTimeout)
		assert.NotEmpty(t, got, "the bytes that did arrive are returned")
	})
	t.Run("context cancelled", func(t *testing.T) {
		_, server := tcpPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := Reader{Timeout: -1}.Read(ctx, server, nil, &ClientHello{})
		require.ErrorIs(t, err, ErrTimeout)
		require.ErrorIs(t, err, context.Canceled)
	})
	t.Run("deadline cleared after success", func(t *testing.T) {
		client, server := tcpPair(t)
		raw := recordsOf(buildHello(helloSpec{names: [][]byte{[]byte("a.b")}}), 1<<14)
		client.Write(raw)
		_, err := Reader{Timeout: 30 * time.Millisecond}.Read(context.Background(), server, nil, &ClientHello{})
		require.NoError(t, err)
		time.Sleep(60 * time.Millisecond)
		client.Write([]byte("x"))
		b := make([]byte, 1)
		_, err = server.Read(b)
		require.NoError(t, err, "the peek deadline must not outlive Read")
	})
}

func TestReadAppendsToBuffer(t *testing.T) {
	raw := recordsOf(buildHello(helloSpec{names: [][]byte{[]byte("a.b")}}), 1<<14)
	prefix := []byte("prefix")
	got, err := Reader{}.Read(context.Background(), &trickleConn{data: raw, chunk: 5}, prefix, &ClientHello{})
	require.NoError(t, err)
	assert.Equal(t, append([]byte("prefix"), raw...), got)
}

func TestErrorsAreDistinct(t *testing.T) {
	all := []error{ErrNotTLS, ErrMalformed, ErrInvalidServerName, ErrTooLarge, ErrTimeout}
	for i, a := range all {
		for j, b := range all {
			assert.Equal(t, i == j, errors.Is(a, b), "%v vs %v", a, b)
		}
	}
}

// A clone shares no storage with the hello it was made from: parsing into
// the original afterwards leaves it as it was. A typical hello clones in
// one allocation.
func TestCloneSharesNothing(t *testing.T) {
	var h ClientHello
	require.NoError(t, ParseClientHello(buildHello(helloSpec{names: [][]byte{[]byte("a.example")}, alpn: []string{"h2", "http/1.1"}, versions: []uint16{0x0304, 0x0303}}), &h))
	c := h.Clone()
	require.NoError(t, ParseClientHello(buildHello(helloSpec{names: [][]byte{[]byte("b.example")}, alpn: []string{"x1", "x2"}, versions: []uint16{0x0304, 0x0303}}), &h))
	assert.Equal(t, "a.example", c.ServerName)
	assert.Equal(t, []string{"h2", "http/1.1"}, c.ALPN)
	assert.Equal(t, "b.example", h.ServerName)
	assert.Equal(t, []string{"x1", "x2"}, h.ALPN)
	assert.Equal(t, h.SupportedVersions, c.SupportedVersions)
	assert.Equal(t, 1.0, testing.AllocsPerRun(100, func() { _ = h.Clone() }))

	long := &ClientHello{ServerName: "x", ALPN: []string{"1", "2", "3", "4", "5"}, SupportedVersions: []uint16{1, 2, 3, 4, 5, 6, 7, 8, 9}}
	lc := long.Clone()
	long.ALPN[0], long.SupportedVersions[0] = "changed", 99
	assert.Equal(t, "1", lc.ALPN[0])
	assert.EqualValues(t, 1, lc.SupportedVersions[0])
	assert.Nil(t, (&ClientHello{}).Clone().ALPN)
}
