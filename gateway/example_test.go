package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"

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

// Swap the routes of a running gateway: connections already routed keep
// their route, new ones take the new one.
func ExampleSwitch() {
	var sw gateway.Switch
	before, _ := gateway.NewTable(map[string][]string{"api.example.com": {"127.0.0.1:9001"}})
	after, _ := gateway.NewTable(map[string][]string{"api.example.com": {"127.0.0.1:9101"}})
	hello := &sni.ClientHello{ServerName: "api.example.com"}

	sw.Store(before)
	r, _ := sw.Route(context.Background(), hello)
	fmt.Println(r.Targets)
	sw.Store(after) // for example on a reload
	r, _ = sw.Route(context.Background(), hello)
	fmt.Println(r.Targets)
	// Output:
	// [127.0.0.1:9001]
	// [127.0.0.1:9101]
}

// Forward two connections both ways, outside a Server.
func ExampleForwarder() {
	upstream, _ := net.Listen("tcp", "127.0.0.1:0")
	defer upstream.Close()
	go func() {
		c, err := upstream.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c) // echo until the client half-closes
		c.Close()
	}()
	front, _ := net.Listen("tcp", "127.0.0.1:0")
	defer front.Close()
	stats := make(chan gateway.Stats, 1)
	go func() {
		client, err := front.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", upstream.Addr().String())
		if err != nil {
			client.Close()
			return
		}
		var f gateway.Forwarder
		stats <- f.Forward(client, up, []byte("hello, ")) // replayed first
	}()

	c, _ := net.Dial("tcp", front.Addr().String())
	c.Write([]byte("world"))
	c.(*net.TCPConn).CloseWrite() // the half-close reaches the upstream
	reply, _ := io.ReadAll(c)
	c.Close()
	s := <-stats
	fmt.Printf("%s: %d bytes up, %d down\n", reply, s.ClientToUpstream, s.UpstreamToClient)
	// Output: hello, world: 12 bytes up, 12 down
}

// Count what a Server sees: Counters is a ready-made Observer.
func ExampleCounters() {
	table, _ := gateway.NewTable(map[string][]string{"api.example.com": {"127.0.0.1:1"}})
	var counters gateway.Counters
	srv := &gateway.Server{Router: table, Observer: &counters}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	for _, name := range []string{"db.example.com", "cache.example.com"} {
		c, _ := net.Dial("tcp", ln.Addr().String())
		c.Write(minimalHello(name))
		io.ReadAll(c) // the gateway closes it: no route
		c.Close()
	}
	snap := counters.Snapshot()
	fmt.Println(snap.Accepted, snap.Rejected[gateway.ReasonNoRoute])
	// Output: 2 2
}

// A Router of your own: any function of the ClientHello. Refuse with
// Reject and a reason of your own (the metrics count refusals by reason);
// mark routes to other sites' gateways Remote, and give each a Kind.
func ExampleRouterFunc() {
	router := gateway.RouterFunc(func(_ context.Context, hello *sni.ClientHello) (gateway.Route, error) {
		switch {
		case hello.ServerName == "api.eu.example":
			return gateway.Route{Name: "api eu", Kind: "service", Targets: []string{"10.0.1.10:8443", "10.0.1.11:8443"}}, nil
		case strings.HasSuffix(hello.ServerName, ".us.example"):
			return gateway.Route{Name: "site us", Kind: "gateway", Targets: []string{"192.0.2.10:8443"}, Remote: true}, nil
		}
		return gateway.Route{}, gateway.Reject("not-ours", "no site serves %q", hello.ServerName)
	})
	for _, name := range []string{"api.eu.example", "web.us.example", "www.example.org"} {
		route, err := router.Route(context.Background(), &sni.ClientHello{ServerName: name})
		fmt.Println(route.Name, route.Targets, err)
	}
	_ = &gateway.Server{Router: router}
	// Output:
	// api eu [10.0.1.10:8443 10.0.1.11:8443] <nil>
	// site us [192.0.2.10:8443] <nil>
	//  [] gateway: rejected (not-ours): no site serves "www.example.org"
}
