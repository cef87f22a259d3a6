package sni

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// replayConn is an in-memory net.Conn that serves the same bytes on every
// reset and discards writes, so benchmarks measure parsing, not sockets.
type replayConn struct {
	data []byte
	off  int
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.off == len(c.data) {
		return 0, io.EOF
	}
	n := copy(p, c.data[c.off:])
	c.off += n
	return n, nil
}
func (c *replayConn) Write(p []byte) (int, error)        { return 0, io.ErrClosedPipe }
func (c *replayConn) Close() error                       { return nil }
func (c *replayConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *replayConn) SetDeadline(t time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(t time.Time) error { return nil }

var errStop = errors.New("stop after the ClientHello")

// BenchmarkHello compares, per real client's ClientHello:
//   - Parse: ParseClientHello on the handshake message;
//   - Read: Reader.Read off an in-memory conn (records, reassembly, parse);
//   - TLSConfigForClientError: crypto/tls with GetConfigForClient returning an
//     error once it has the name (Traefik's idiom);
//   - TLSConfigForClientNil: crypto/tls with GetConfigForClient returning nil
//     and the handshake failing on the first write (tcpproxy's idiom).
func BenchmarkHello(b *testing.B) {
	for _, e := range loadCorpus(b) {
		msg := e.bytes[recordHeaderLen:]
		if n := int(e.bytes[3])<<8 | int(e.bytes[4]); n != len(msg) {
			b.Fatalf("%s: corpus entry is not one record", e.Client)
		}
		b.Run("Parse/"+e.Client, func(b *testing.B) {
			var h ClientHello
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if err := ParseClientHello(msg, &h); err != nil {
					b.Fatal(err)
				}
			}
			if h.ServerName != e.ServerName {
				b.Fatalf("got %q", h.ServerName)
			}
		})
		b.Run("Read/"+e.Client, func(b *testing.B) {
			var h ClientHello
			conn := &replayConn{data: e.bytes}
			buf := make([]byte, 0, 4096)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				conn.off = 0
				if _, err := (Reader{}).Read(ctx, conn, buf[:0], &h); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, idiom := range []struct {
			name string
			ret  error
		}{{"TLSConfigForClientError", errStop}, {"TLSConfigForClientNil", nil}} {
			b.Run(idiom.name+"/"+e.Client, func(b *testing.B) {
				conn := &replayConn{data: e.bytes}
				var name string
				cfg := &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
					name = hi.ServerName
					return nil, idiom.ret
				}}
				b.ReportAllocs()
				for b.Loop() {
					conn.off = 0
					_ = tls.Server(conn, cfg).Handshake()
				}
				if name != e.ServerName {
					b.Fatalf("got %q", name)
				}
			})
		}
	}
}

func BenchmarkParseName(b *testing.B) {
	name := "v2.api.default.part1.dc1.internal-v1." + td
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseName(name, td); err != nil {
			b.Fatal(err)
		}
	}
}
