package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/sni"
)

// A gateway for users without Consul: route by exact name or *.suffix.
func ExampleTable() {
	table, err := gateway.NewTable(map[string][]string{
		"api.example.com": {"127.0.0.1:9001"},
		"*.example.com":   {"127.0.0.1:9002", "127.0.0.1:9003"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, name := range []string{"api.example.com", "web.example.com", "example.org"} {
		r, err := table.Route(context.Background(), &sni.ClientHello{ServerName: name})
		fmt.Println(name, r.Targets, err)
	}
	// Output:
	// api.example.com [127.0.0.1:9001] <nil>
	// web.example.com [127.0.0.1:9002 127.0.0.1:9003] <nil>
	// example.org [] gateway: rejected (no-route): no route for "example.org"
}

// Serve routes each connection by its SNI and forwards the bytes unchanged.
func ExampleServer() {
	// A backend that answers whatever it is sent.
	backend, _ := net.Listen("tcp", "127.0.0.1:0")
	defer backend.Close()
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("seen"))
	}()

	table, _ := gateway.NewTable(map[string][]string{"*.internal.example": {backend.Addr().String()}})
	var counters gateway.Counters
	srv := &gateway.Server{Router: table, Observer: &counters}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	// A client sends a ClientHello: the handcrafted minimum with a server_name.
	c, _ := net.Dial("tcp", ln.Addr().String())
	defer c.Close()
	c.Write(minimalHello("api.internal.example"))
	reply, _ := io.ReadAll(io.LimitReader(c, 4))
	fmt.Println(string(reply))
	// Output: seen
}

// minimalHello returns a TLS record holding a ClientHello with only a
// server_name extension.
func minimalHello(name string) []byte {
	sniExt := append([]byte{0, 0, byte((len(name) + 5) >> 8), byte(len(name) + 5), byte((len(name) + 3) >> 8), byte(len(name) + 3), 0, byte(len(name) >> 8), byte(len(name))}, name...)
	body := append([]byte{3, 3}, make([]byte, 32)...)
	body = append(body, 0, 0, 2, 0x13, 0x01, 1, 0)
	body = append(body, byte(len(sniExt)>>8), byte(len(sniExt)))
	body = append(body, sniExt...)
	msg := append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}
