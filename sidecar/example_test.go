package sidecar_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net/url"

	"github.com/hashicorp/consul/api"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
)

// The identity a destination must present: the planned target, in the
// plan's datacenter, namespace and partition.
func ExampleExpectedIdentity() {
	plan := resolve.Plan{Upstream: "api", Target: resolve.Target{Datacenter: "dc2", Namespace: "default", Partition: "default"}}
	id := sidecar.ExpectedIdentity(plan, config.DefaultTrustDomain)
	fmt.Println(id)
	u, _ := url.Parse("spiffe://" + config.DefaultTrustDomain + "/ns/default/dc/dc2/svc/billing")
	fmt.Println(id.Matches(u))
	// Output:
	// spiffe://5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul/ns/default/dc/dc2/svc/api
	// false
}

// A Connect-native service that serves only the clients Consul's
// intentions allow, asking the local agent (CONSUL_HTTP_ADDR) at each
// handshake. Not run: it needs an agent.
func ExampleCerts_AuthorizingServerTLSConfig() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	certs, err := sidecar.WatchCerts(context.Background(), client, "api")
	if err != nil {
		log.Fatal(err)
	}
	defer certs.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:21000", certs.AuthorizingServerTLSConfig(client, "api"))
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			if err := c.(*tls.Conn).Handshake(); err != nil {
				log.Print(err) // errors.Is(err, sidecar.ErrNotAuthorized) for a denied client
				return
			}
			c.Write([]byte("hello\n"))
		}()
	}
}

// A Go program dials its upstream the way a Consul sidecar would: the plan
// from the live view (its mode, path and failover targets), mTLS with the
// program's own leaf, the destination's identity checked. Not run: it
// needs an agent.
func ExampleDialer() {
	ctx := context.Background()
	client, err := api.NewClient(api.DefaultConfig()) // CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...
	if err != nil {
		log.Fatal(err)
	}
	certs, err := sidecar.WatchCerts(ctx, client, "web") // leaf and CA roots, kept current
	if err != nil {
		log.Fatal(err)
	}
	src, err := consulview.New(ctx, client, consulview.Options{})
	if err != nil {
		log.Fatal(err)
	}
	d := &sidecar.Dialer{Source: src, Certs: certs, Client: client,
		Instance: mesh.Instance{Service: "web", Proxy: &api.AgentServiceConnectProxyConfig{}}}
	conn, plan, err := d.Dial(ctx, api.Upstream{DestinationName: "api", Datacenter: "dc2"})
	if err != nil {
		log.Fatal(err) // names every target and address tried, and why each failed
	}
	defer conn.Close()
	// plan.Mode, plan.Source (the deciding layer), plan.Hops; plan.Served is
	// the target of plan.Chain() that carried the connection.
	fmt.Println(plan.Chain()[plan.Served], plan.PassedOver)
}
