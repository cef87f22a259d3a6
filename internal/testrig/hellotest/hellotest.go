// Package hellotest gives tests real ClientHellos.
package hellotest

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// Record returns the first TLS record crypto/tls sends for server name
// name: a real ClientHello, to write on a raw connection.
func Record(tb testing.TB, name string) []byte {
	tb.Helper()
	return RecordALPN(tb, name)
}

// RecordALPN is Record with the ALPN protocols alpn.
func RecordALPN(tb testing.TB, name string, alpn ...string) []byte {
	tb.Helper()
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, &tls.Config{ServerName: name, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
		client.Close()
	}()
	header := make([]byte, 5)
	if _, err := io.ReadFull(server, header); err != nil {
		tb.Fatalf("reading the ClientHello's record header: %v", err)
	}
	body := make([]byte, int(header[3])<<8|int(header[4]))
	if _, err := io.ReadFull(server, body); err != nil {
		tb.Fatalf("reading the ClientHello: %v", err)
	}
	return append(header, body...)
}
