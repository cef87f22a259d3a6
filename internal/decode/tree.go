// Package decode reads HCL (v1), JSON and YAML into one tree that keeps line
// numbers, and decodes that tree into Go values strictly: keys match struct
// fields regardless of case and underscores (so CamelCase and snake_case both
// work, as in Consul), a one-element list decodes into a struct the way Consul
// unwraps HCL blocks, and an unknown key is an error that names the key, the
// file, the line and the closest known key. Every problem is reported, not
// only the first.
package decode

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/hcl/ast"
	hclparser "github.com/hashicorp/hcl/hcl/parser"
	hcltoken "github.com/hashicorp/hcl/hcl/token"
	"go.yaml.in/yaml/v3"
)

// Kind is the shape of a Node.
type Kind uint8

// Node kinds.
const (
	Null Kind = iota
	Map
	List
	Scalar
)

// Node is one value of a parsed document.
type Node struct {
	Kind  Kind
	Line  int     // 1-based; 0 when the format gives none
	Keys  []Key   // Map: entries in document order
	Items []*Node // List
	Value any     // Scalar: string, bool, int64 or float64
}

// Key is one map entry.
type Key struct {
	Name string
	Line int
	Val  *Node
}

// Get returns the value of the first key equal to name by Normalize, or nil.
func (n *Node) Get(name string) *Node {
	if n == nil || n.Kind != Map {
		return nil
	}
	want := Normalize(name)
	for _, k := range n.Keys {
		if Normalize(k.Name) == want {
			return k.Val
		}
	}
	return nil
}

// Without returns a copy of the map n without the keys equal to names.
func (n *Node) Without(names ...string) *Node {
	out := *n
	out.Keys = nil
	for _, k := range n.Keys {
		drop := false
		for _, name := range names {
			drop = drop || Normalize(k.Name) == Normalize(name)
		}
		if !drop {
			out.Keys = append(out.Keys, k)
		}
	}
	return &out
}

// Normalize folds a key the way matching ignores: ASCII case, '_' and '-'.
func Normalize(key string) string {
	var b strings.Builder
	for _, c := range key {
		switch {
		case c == '_' || c == '-':
		case 'A' <= c && c <= 'Z':
			b.WriteRune(c + 'a' - 'A')
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// Format is a file format.
type Format string

// Formats ParseFile understands.
const (
	HCL  Format = "hcl"
	JSON Format = "json"
	YAML Format = "yaml"
)

// FormatOf returns the format for a file name's extension, or "".
func FormatOf(name string) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".hcl":
		return HCL
	case ".json":
		return JSON
	case ".yaml", ".yml":
		return YAML
	}
	return ""
}

// Parse parses src in format f into its documents: one for HCL, one per value
// for JSON (a top-level array gives one per element), one per YAML document.
func Parse(f Format, src []byte) ([]*Node, error) {
	switch f {
	case HCL:
		n, err := parseHCL(src)
		if err != nil {
			return nil, err
		}
		return []*Node{n}, nil
	case JSON:
		return parseJSON(src)
	case YAML:
		return parseYAML(src)
	}
	return nil, fmt.Errorf("unknown format %q (want hcl, json or yaml)", f)
}

func parseHCL(src []byte) (*Node, error) {
	file, err := hclparser.Parse(src)
	if err != nil {
		return nil, err
	}
	list, ok := file.Node.(*ast.ObjectList)
	if !ok {
		return nil, errors.New("HCL file is not a list of keys")
	}
	return hclObject(list, 1)
}

// hclObject turns an object list into a map. An item with several keys
// (service "api" { ... }) nests one map per key; a key given more than once
// (two service blocks) becomes a list.
func hclObject(list *ast.ObjectList, line int) (*Node, error) {
	out := &Node{Kind: Map, Line: line}
	for _, item := range list.Items {
		val, err := hclValue(item.Val)
		if err != nil {
			return nil, err
		}
		for i := len(item.Keys) - 1; i >= 1; i-- {
			k := item.Keys[i]
			val = &Node{Kind: Map, Line: k.Pos().Line, Keys: []Key{{Name: hclKey(k), Line: k.Pos().Line, Val: val}}}
		}
		name, kl := hclKey(item.Keys[0]), item.Keys[0].Pos().Line
		merged := false
		for i := range out.Keys {
			if out.Keys[i].Name != name {
				continue
			}
			prev := out.Keys[i].Val
			if prev.Kind == Map && val.Kind == Map && len(item.Keys) > 1 {
				prev.Keys = append(prev.Keys, val.Keys...) // service "a" {} service "b" {}
			} else if prev.Kind == List && prev.Line == -1 {
				prev.Items = append(prev.Items, val)
			} else {
				out.Keys[i].Val = &Node{Kind: List, Line: -1, Items: []*Node{prev, val}}
			}
			merged = true
			break
		}
		if !merged {
			out.Keys = append(out.Keys, Key{Name: name, Line: kl, Val: val})
		}
	}
	for i := range out.Keys {
		if out.Keys[i].Val.Line == -1 {
			out.Keys[i].Val.Line = out.Keys[i].Line
		}
	}
	return out, nil
}

func hclKey(k *ast.ObjectKey) string {
	if k.Token.Type == hcltoken.STRING {
		if v, err := hclLiteral(k.Token); err == nil {
			if s, ok := v.(string); ok {
				return s
			}
		}
	}
	return k.Token.Text
}

func hclValue(n ast.Node) (*Node, error) {
	switch v := n.(type) {
	case *ast.LiteralType:
		val, err := hclLiteral(v.Token)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", v.Pos().Line, err)
		}
		return &Node{Kind: Scalar, Line: v.Pos().Line, Value: val}, nil
	case *ast.ListType:
		out := &Node{Kind: List, Line: v.Pos().Line}
		for _, item := range v.List {
			c, err := hclValue(item)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, c)
		}
		return out, nil
	case *ast.ObjectType:
		return hclObject(v.List, v.Pos().Line)
	}
	return nil, fmt.Errorf("line %d: unsupported HCL value %T", n.Pos().Line, n)
}

// hclLiteral returns a literal's value. The HCL v1 library panics on some
// malformed literals its lexer lets through (a number like 0eA); that becomes
// an error naming the text.
func hclLiteral(tok hcltoken.Token) (val any, err error) {
	defer func() {
		if recover() != nil {
			err = fmt.Errorf("invalid %s literal %q", strings.ToLower(tok.Type.String()), tok.Text)
		}
	}()
	return tok.Value(), nil
}

func parseJSON(src []byte) ([]*Node, error) {
	lines := lineStarts(src)
	dec := json.NewDecoder(bytes.NewReader(src))
	dec.UseNumber()
	var docs []*Node
	for {
		n, err := jsonValue(dec, lines)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineAt(lines, int(dec.InputOffset())), err)
		}
		if n.Kind == List {
			docs = append(docs, n.Items...)
		} else {
			docs = append(docs, n)
		}
	}
	return docs, nil
}

func jsonValue(dec *json.Decoder, lines []int) (*Node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	line := lineAt(lines, int(dec.InputOffset())-1)
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			out := &Node{Kind: Map, Line: line}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				kl := lineAt(lines, int(dec.InputOffset())-1)
				v, err := jsonValue(dec, lines)
				if err != nil {
					return nil, err
				}
				out.Keys = append(out.Keys, Key{Name: kt.(string), Line: kl, Val: v})
			}
			_, err = dec.Token()
			return out, err
		case '[':
			out := &Node{Kind: List, Line: line}
			for dec.More() {
				v, err := jsonValue(dec, lines)
				if err != nil {
					return nil, err
				}
				out.Items = append(out.Items, v)
			}
			_, err = dec.Token()
			return out, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return &Node{Kind: Scalar, Line: line, Value: i}, nil
		}
		f, err := t.Float64()
		return &Node{Kind: Scalar, Line: line, Value: f}, err
	case nil:
		return &Node{Kind: Null, Line: line}, nil
	default:
		return &Node{Kind: Scalar, Line: line, Value: t}, nil
	}
}

func lineStarts(src []byte) []int {
	starts := []int{0}
	for i, c := range src {
		if c == '\n' {
			starts = append(starts, i+1)
		}
	}
	return starts
}

func lineAt(starts []int, off int) int {
	return sort.Search(len(starts), func(i int) bool { return starts[i] > off })
}

func parseYAML(src []byte) ([]*Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var docs []*Node
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		n, err := yamlValue(&doc)
		if err != nil {
			return nil, err
		}
		if n.Kind == List {
			docs = append(docs, n.Items...)
		} else if n.Kind != Null {
			docs = append(docs, n)
		}
	}
	return docs, nil
}

// Limits on what a YAML document may expand to. Aliases are expanded in
// place, so a few hundred bytes of nested aliases (an "alias bomb") could
// otherwise stand for billions of nodes, and an alias inside its own anchor
// for an infinite tree. Consul's files are small and shallow.
const (
	// MaxYAMLNodes bounds the nodes one YAML file expands to, aliases
	// expanded.
	MaxYAMLNodes = 100_000
	// MaxDepth bounds the nesting of maps and lists in a YAML file.
	MaxDepth = 100
)

// ErrYAMLTooLarge is wrapped by the errors of YAML files that expand beyond
// MaxYAMLNodes or MaxDepth, or whose aliases refer to themselves.
var ErrYAMLTooLarge = errors.New("YAML document too large")

// yamlWalker turns a yaml.Node tree into a Node tree within the limits.
type yamlWalker struct {
	nodes  int
	active map[*yaml.Node]bool // anchors being expanded on the current path
}

func yamlValue(y *yaml.Node) (*Node, error) {
	w := &yamlWalker{active: map[*yaml.Node]bool{}}
	return w.value(y, 0)
}

func (w *yamlWalker) value(y *yaml.Node, depth int) (*Node, error) {
	w.nodes++
	switch {
	case w.nodes > MaxYAMLNodes:
		return nil, fmt.Errorf("line %d: %w: more than %d values once aliases are expanded", y.Line, ErrYAMLTooLarge, MaxYAMLNodes)
	case depth > MaxDepth:
		return nil, fmt.Errorf("line %d: %w: nested more than %d deep", y.Line, ErrYAMLTooLarge, MaxDepth)
	}
	switch y.Kind {
	case yaml.DocumentNode:
		if len(y.Content) == 0 {
			return &Node{Kind: Null}, nil
		}
		return w.value(y.Content[0], depth)
	case yaml.AliasNode:
		if y.Alias == nil {
			return nil, fmt.Errorf("line %d: alias *%s has no anchor", y.Line, y.Value)
		}
		if w.active[y.Alias] {
			return nil, fmt.Errorf("line %d: %w: alias *%s refers to itself (its anchor &%s is on line %d)", y.Line, ErrYAMLTooLarge, y.Value, y.Alias.Anchor, y.Alias.Line)
		}
		w.active[y.Alias] = true
		defer delete(w.active, y.Alias)
		return w.value(y.Alias, depth)
	case yaml.MappingNode:
		if y.Anchor != "" {
			w.active[y] = true
			defer delete(w.active, y)
		}
		out := &Node{Kind: Map, Line: y.Line}
		for i := 0; i+1 < len(y.Content); i += 2 {
			k, v := y.Content[i], y.Content[i+1]
			if k.Tag == "!!merge" {
				return nil, fmt.Errorf("line %d: YAML merge keys are not supported", k.Line)
			}
			val, err := w.value(v, depth+1)
			if err != nil {
				return nil, err
			}
			out.Keys = append(out.Keys, Key{Name: k.Value, Line: k.Line, Val: val})
		}
		return out, nil
	case yaml.SequenceNode:
		if y.Anchor != "" {
			w.active[y] = true
			defer delete(w.active, y)
		}
		out := &Node{Kind: List, Line: y.Line}
		for _, c := range y.Content {
			v, err := w.value(c, depth+1)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, v)
		}
		return out, nil
	case yaml.ScalarNode:
		var v any
		if err := y.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %w", y.Line, err)
		}
		switch t := v.(type) {
		case nil:
			return &Node{Kind: Null, Line: y.Line}, nil
		case int:
			v = int64(t)
		case uint64:
			v = float64(t)
		}
		return &Node{Kind: Scalar, Line: y.Line, Value: v}, nil
	}
	return nil, fmt.Errorf("line %d: unsupported YAML node", y.Line)
}
