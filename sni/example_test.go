package sni_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"github.com/meshgate/meshgate/sni"
)

// A gateway peeks at the ClientHello, decides, and forwards every byte read.
func ExampleReader_Read() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	name := sni.ServiceSNI("api", "", "default", "", "dc1", "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul")
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
		}
	}()
	conn, _ := ln.Accept()
	defer conn.Close()

	var hello sni.ClientHello
	raw, err := sni.Reader{}.Read(context.Background(), conn, nil, &hello)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(hello.ServerName)
	fmt.Println(len(raw) > 0, hello.MaxVersion() == tls.VersionTLS13)
	// Output:
	// api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul
	// true true
}

func ExampleParseName() {
	const td = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
	n, err := sni.ParseName("v2.api.default.part1.dc1.internal-v1."+td, td)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(n.Kind, n.Subset, n.Service, n.Namespace, n.Partition, n.Datacenter)

	_, err = sni.ParseName("api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul", td)
	fmt.Println(err)
	// Output:
	// service v2 api default part1 dc1
	// sni: name is not in the trust domain "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul": "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
}

func ExampleServiceSNI() {
	const td = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
	fmt.Println(sni.ServiceSNI("api", "", "", "", "dc1", td))
	fmt.Println(sni.PeeredServiceSNI("api", "billing", "", "webstuff", td))
	fmt.Println(sni.GatewaySNI("dc2", "", td))
	// Output:
	// api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul
	// api.billing.default.webstuff.external.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul
	// dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul
}

// An event loop reads a socket without blocking and asks a Gatherer, after
// each read, whether the ClientHello is whole yet.
func ExampleGatherer() {
	// A hello captured off the wire, arriving in two reads.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "api.example", InsecureSkipVerify: true})
		if err == nil {
			c.Close()
		}
	}()
	conn, _ := ln.Accept()
	defer conn.Close()
	var wire sni.ClientHello
	raw, _ := sni.Reader{}.Read(context.Background(), conn, nil, &wire)

	var g sni.Gatherer
	defer g.Reset()
	var data []byte
	for _, read := range [][]byte{raw[:100], raw[100:]} {
		data = append(data, read...)
		msg, need, err := g.Next(data)
		switch {
		case err != nil:
			fmt.Println(err)
			return
		case msg == nil:
			fmt.Println("not yet: need", need > len(data))
		default:
			var hello sni.ClientHello
			if err := sni.ParseClientHello(msg, &hello); err == nil {
				fmt.Println(hello.ServerName)
			}
		}
	}
	// Output:
	// not yet: need true
	// api.example
}
