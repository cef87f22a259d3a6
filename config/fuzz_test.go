package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the loader in each format: it must return
// a Set or an error, never panic.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*", "*.*"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(0), b)
		f.Add(uint8(1), b)
		f.Add(uint8(2), b)
	}
	f.Add(uint8(1), []byte(`{"Kind": "mesh", "Peering": [{"PeerThroughMeshGateways": "true"}]}`))
	// Aliases, anchors and nesting, for the YAML walk's limits.
	f.Add(uint8(2), []byte("a: &a [*a]\n"))
	f.Add(uint8(2), []byte("x: &x {k: &y [*x, *y]}\n"))
	f.Add(uint8(2), []byte("a: &a [1, 2]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\nKind: mesh\n"))
	f.Add(uint8(2), []byte("Kind: mesh\nPeering: [[[[[[[[[[{}]]]]]]]]]]\n"))
	names := []string{"f.hcl", "f.json", "f.yaml"}
	f.Fuzz(func(t *testing.T, format uint8, src []byte) {
		set, err := Parse(names[int(format)%len(names)], src)
		if err == nil && set == nil {
			t.Fatal("no set and no error")
		}
	})
}
