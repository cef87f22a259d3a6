package config_test

import (
	"fmt"

	"github.com/meshgate/meshgate/config"
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
