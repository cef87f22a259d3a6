package decode

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshgate/meshgate/internal/problems"
)

// Error is one problem found while decoding, with where it was found.
type Error struct {
	File string
	Line int
	Path string // the key path as the file spells it, such as "proxy.upstreams[1].mesh_gateway"
	Msg  string
}

// Error formats the problem as "file:line: path: message".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Path != "" {
		fmt.Fprintf(&b, ": %s", e.Path)
	}
	fmt.Fprintf(&b, ": %s", e.Msg)
	return b.String()
}

// Check validates a value once it is decoded. It is called for every value
// whose type it was registered for; a non-nil error is recorded at the
// value's line.
type Check func(v reflect.Value) error

// Decoder decodes nodes into Go values, collecting every problem.
type Decoder struct {
	// File names the source in errors.
	File string
	// Checks run after a value of the keyed type is decoded.
	Checks map[reflect.Type]Check
	// Ignore lists keys that are accepted and dropped wherever they appear
	// (compared with Normalize), such as an agent file's "token".
	Ignore []string

	errs []error
}

// Errorf records a problem at line.
func (d *Decoder) Errorf(line int, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.File, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Err returns every problem recorded so far as one *multierror.Error
// (problems.Join), or nil.
func (d *Decoder) Err() error { return problems.Join(d.errs...) }

// Decode decodes n into the value out points to. Problems are recorded and
// returned by Err; Decode itself never panics on bad input.
func (d *Decoder) Decode(n *Node, out any, path string) {
	v := reflect.ValueOf(out)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		panic("decode: Decode needs a non-nil pointer")
	}
	d.value(n, v.Elem(), path)
}

var (
	durationType        = reflect.TypeFor[time.Duration]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func (d *Decoder) value(n *Node, v reflect.Value, path string) {
	if n == nil || n.Kind == Null {
		return
	}
	t := v.Type()
	switch {
	case t == durationType:
		d.duration(n, v, path)
	case t.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.value(n, v.Elem(), path)
		return // the check runs for the element type
	case t.Kind() == reflect.Struct:
		d.structValue(n, v, path)
	case t.Kind() == reflect.Map:
		d.mapValue(n, v, path)
	case t.Kind() == reflect.Slice:
		d.sliceValue(n, v, path)
	case t.Kind() == reflect.Interface:
		v.Set(reflect.ValueOf(Plain(n)))
	default:
		d.scalar(n, v, path)
	}
	if check := d.Checks[t]; check != nil {
		if err := check(v); err != nil {
			d.Errorf(n.Line, path, "%v", err)
		}
	}
}

// unwrap returns the map inside a one-element list, as Consul unwraps HCL
// blocks (and the seeds' YAML writes "MeshGateway: [ {Mode: local} ]").
func (d *Decoder) unwrap(n *Node, path, what string) *Node {
	if n.Kind == List {
		if len(n.Items) != 1 {
			d.Errorf(n.Line, path, "want one %s, got a list of %d", what, len(n.Items))
			return nil
		}
		n = n.Items[0]
	}
	if n.Kind != Map {
		d.Errorf(n.Line, path, "want a %s, got %s", what, describe(n))
		return nil
	}
	return n
}

type field struct {
	index []int
	name  string // canonical (Go field) name, for messages and suggestions
}

func fieldsOf(t reflect.Type) map[string]field {
	out := map[string]field{}
	for _, f := range reflect.VisibleFields(t) {
		if !f.IsExported() || f.Anonymous {
			continue
		}
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		if tag == "-" {
			continue
		}
		names := []string{f.Name}
		if tag != "" {
			names = append(names, tag)
		}
		if alias := f.Tag.Get("alias"); alias != "" {
			names = append(names, alias)
		}
		for _, n := range names {
			out[Normalize(n)] = field{index: f.Index, name: f.Name}
		}
	}
	return out
}

func (d *Decoder) structValue(n *Node, v reflect.Value, path string) {
	n = d.unwrap(n, path, "block")
	if n == nil {
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]int{}
	for _, k := range n.Keys {
		norm := Normalize(k.Name)
		if d.ignored(norm) {
			continue
		}
		f, ok := fields[norm]
		if !ok {
			d.Errorf(k.Line, path, "unknown key %q%s", k.Name, suggest(k.Name, fields))
			continue
		}
		if line, dup := seen[f.name]; dup {
			d.Errorf(k.Line, path, "key %q given twice (first on line %d)", k.Name, line)
			continue
		}
		seen[f.name] = k.Line
		// The path names the key as the file writes it (mesh_gateway or
		// MeshGateway), so that an error points at what the user wrote.
		d.value(k.Val, v.FieldByIndex(f.index), join(path, k.Name))
	}
}

func (d *Decoder) ignored(norm string) bool {
	for _, i := range d.Ignore {
		if Normalize(i) == norm {
			return true
		}
	}
	return false
}

func (d *Decoder) mapValue(n *Node, v reflect.Value, path string) {
	n = d.unwrap(n, path, "map")
	if n == nil {
		return
	}
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		d.Errorf(n.Line, path, "cannot decode into %s", t)
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(t))
	}
	for _, k := range n.Keys {
		elem := reflect.New(t.Elem()).Elem()
		d.value(k.Val, elem, path+"["+strconv.Quote(k.Name)+"]")
		v.SetMapIndex(reflect.ValueOf(k.Name).Convert(t.Key()), elem)
	}
}

func (d *Decoder) sliceValue(n *Node, v reflect.Value, path string) {
	if n.Kind != List {
		d.Errorf(n.Line, path, "want a list, got %s", describe(n))
		return
	}
	out := reflect.MakeSlice(v.Type(), len(n.Items), len(n.Items))
	for i, item := range n.Items {
		d.value(item, out.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(out)
}

func (d *Decoder) duration(n *Node, v reflect.Value, path string) {
	switch x := n.Value.(type) {
	case string:
		dur, err := time.ParseDuration(x)
		if err != nil {
			d.Errorf(n.Line, path, "invalid duration %q", x)
			return
		}
		v.SetInt(int64(dur))
	case int64:
		v.SetInt(x)
	default:
		d.Errorf(n.Line, path, "want a duration such as \"5s\", got %s", describe(n))
	}
}

// scalar decodes strings, numbers and booleans, converting between them the
// way Consul's weak decoding does ("8080" for a port, 1 for true).
func (d *Decoder) scalar(n *Node, v reflect.Value, path string) {
	if n.Kind != Scalar {
		d.Errorf(n.Line, path, "want a %s, got %s", kindWord(v.Kind()), describe(n))
		return
	}
	if reflect.PointerTo(v.Type()).Implements(textUnmarshalerType) {
		if s, ok := n.Value.(string); ok {
			if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
				d.Errorf(n.Line, path, "%v", err)
			}
			return
		}
	}
	bad := func() { d.Errorf(n.Line, path, "want a %s, got %s", kindWord(v.Kind()), describe(n)) }
	switch v.Kind() {
	case reflect.String:
		switch x := n.Value.(type) {
		case string:
			v.SetString(x)
		case int64:
			v.SetString(strconv.FormatInt(x, 10))
		case float64:
			v.SetString(strconv.FormatFloat(x, 'g', -1, 64))
		case bool:
			v.SetString(strconv.FormatBool(x))
		}
	case reflect.Bool:
		switch x := n.Value.(type) {
		case bool:
			v.SetBool(x)
		case string:
			b, err := strconv.ParseBool(x)
			if err != nil {
				bad()
				return
			}
			v.SetBool(b)
		default:
			bad()
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, ok := toInt(n.Value)
		if !ok || v.OverflowInt(i) {
			bad()
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, ok := toInt(n.Value)
		if !ok || i < 0 || v.OverflowUint(uint64(i)) {
			bad()
			return
		}
		v.SetUint(uint64(i))
	case reflect.Float32, reflect.Float64:
		switch x := n.Value.(type) {
		case float64:
			v.SetFloat(x)
		case int64:
			v.SetFloat(float64(x))
		default:
			bad()
		}
	default:
		d.Errorf(n.Line, path, "cannot decode into %s", v.Type())
	}
}

func toInt(x any) (int64, bool) {
	switch x := x.(type) {
	case int64:
		return x, true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x), true
		}
	case string:
		i, err := strconv.ParseInt(x, 10, 64)
		return i, err == nil
	}
	return 0, false
}

// Plain converts a node into plain Go values (map[string]any, []any, string,
// bool, int64, float64, nil), for opaque maps such as a proxy's Config.
func Plain(n *Node) any {
	switch n.Kind {
	case Map:
		m := make(map[string]any, len(n.Keys))
		for _, k := range n.Keys {
			m[k.Name] = Plain(k.Val)
		}
		return m
	case List:
		l := make([]any, len(n.Items))
		for i, item := range n.Items {
			l[i] = Plain(item)
		}
		return l
	case Scalar:
		return n.Value
	}
	return nil
}

func describe(n *Node) string {
	switch n.Kind {
	case Map:
		return "a block"
	case List:
		return fmt.Sprintf("a list of %d", len(n.Items))
	case Scalar:
		return fmt.Sprintf("%T %v", n.Value, n.Value)
	}
	return "null"
}

func kindWord(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "whole number"
	case reflect.Float32, reflect.Float64:
		return "number"
	}
	return k.String()
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// suggest returns ` (did you mean "X"?)` for the known key closest to key, in
// the spelling the user chose (snake_case if key has underscores).
func suggest(key string, fields map[string]field) string {
	names := map[string]bool{}
	for _, f := range fields {
		names[f.name] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	best, bestDist := "", math.MaxInt
	for _, n := range sorted {
		if dist := levenshtein(Normalize(key), Normalize(n)); dist < bestDist {
			best, bestDist = n, dist
		}
	}
	if best == "" || bestDist > max(2, len(key)/3) {
		return ""
	}
	if strings.Contains(key, "_") || strings.ToLower(key) == key {
		best = snake(best)
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// snake turns a Go field name into Consul's snake_case spelling.
func snake(s string) string {
	var b strings.Builder
	for i, c := range s {
		if 'A' <= c && c <= 'Z' {
			prevLower := i > 0 && !('A' <= s[i-1] && s[i-1] <= 'Z')
			nextLower := i+1 < len(s) && 'a' <= s[i+1] && s[i+1] <= 'z'
			if i > 0 && (prevLower || nextLower) {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	return b.String()
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
