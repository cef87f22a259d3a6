package consulview_test

import (
	"context"
	"log"
	"net"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/routing"
)

// A mesh gateway routed from a live Consul agent: the agent is found the
// standard way (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...), the view follows
// its catalog, and the gateway registers itself as Consul's own do. It needs
// an agent, so it has no output to check.
func Example() {
	ctx := context.Background()
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := consulview.New(ctx, client, consulview.Options{WaitForAgent: true})
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:8443")
	if err != nil {
		log.Fatal(err)
	}
	reg, err := registration.Register(ctx, client, registration.Gateway{Address: ln.Addr().String()})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Deregister(context.Background())

	srv := &gateway.Server{Router: &routing.MeshRouter{Source: src}}
	log.Fatal(srv.Serve(ln))
}
