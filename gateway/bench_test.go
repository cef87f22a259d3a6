package gateway

import (
	"io"
	"net"
	"testing"
)

// BenchmarkConnection runs whole connections through a gateway on loopback:
// connect, ClientHello and a byte, a one-byte reply, close. Client, gateway
// and backend share the process, so its figures cover all three; profile
// with -memprofile to see the gateway's part.
func BenchmarkConnection(b *testing.B) {
	be := startBackend(b, func(c net.Conn) {
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4])+1)
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		c.Write([]byte{'p'})
		io.ReadAll(c)
	})
	gw := startGateway(b, &Server{Router: tableFor(b, map[string][]string{longName: {be.addr()}})})
	msg := append(helloBytes(b, longName), 'P')
	var reply [1]byte
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(msg)
		if _, err := io.ReadFull(c, reply[:]); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
