package config_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

func ExampleParse() {
	set, err := config.Parse("global.yaml", []byte("Kind: proxy-defaults\nName: global\nMeshGateway:\n- Mode: local\n"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(set.ProxyDefaults.Name, set.ProxyDefaults.MeshGateway.Mode)

	// The seed's typo fails, naming the key, the line and the fix.
	_, err = config.Parse("mesh.yaml", []byte("Kind: mesh\nPeeering:\n  PeerThroughMeshGateways: true\n"))
	fmt.Println(err)
	// Output:
	// global local
	// mesh.yaml:2: mesh: unknown key "Peeering" (did you mean "Peering"?)
}

// Every problem in a file comes back at once, each a *config.Problem that
// says where it is.
func ExampleProblem() {
	_, err := config.Parse("defaults.hcl", []byte(`
Kind = "proxy-defaults"
Name = "global"
MeshGateway { Mode = "sideways" }
`))
	var p *config.Problem
	if errors.As(err, &p) {
		fmt.Printf("%s line %d, %s: %s\n", p.File, p.Line, p.Path, p.Msg)
	}
	// Output: defaults.hcl line 4, proxy-defaults.MeshGateway.Mode: modes: invalid mesh gateway mode "sideways" (valid: "", "none", "local", "remote")
}

// Route with a View built in Go: empty namespaces and partitions mean
// "default", as in the files.
func ExampleStaticView() {
	src, err := config.StaticView(&mesh.View{
		Datacenter:  "dc1",
		TrustDomain: config.DefaultTrustDomain,
		Services:    map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: {{Address: "10.0.1.10:21000"}}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	route, err := (&routing.MeshRouter{Source: src}).Route(context.Background(),
		&sni.ClientHello{ServerName: sni.ServiceSNI("api", "", "", "", "dc1", config.DefaultTrustDomain)})
	fmt.Println(route.Targets, err)
	// Output: [10.0.1.10:21000] <nil>
}
