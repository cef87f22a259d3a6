// Package config loads the files people give Consul (config entries and agent
// service definitions) and meshgate's topology document, from HCL, JSON or
// YAML, into consul/api types.
//
// It accepts what Consul accepts: CamelCase or snake_case keys, HCL blocks
// that decode as one-element lists, the YAML shape of Consul's documentation
// (MeshGateway: [ {Mode: local} ]), one or several documents per file. It is
// strict where silence would hurt: an unknown key, an invalid mesh-gateway
// mode, an upstream with both datacenter and destination_peer, a second
// proxy-defaults; each error names the value, the file and the line, and
// every problem of a load is reported at once.
//
// A topology document (a top-level topology key) says where things are,
// for planning and routing without a Consul agent; it decodes straight
// into package mesh's View (Set.Topology), meshgate's one model of the
// mesh. Its rows are the file spelling of the View's maps: a services row
// is one entry of View.Services (of View.Subsets when it names a subset), a
// gateways row one of View.Gateways, a peers row one of View.Peers. In HCL:
//
//	topology {
//	  datacenter   = "dc1"
//	  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
//	  services = [
//	    { name = "api", datacenter = "dc2", addresses = ["10.0.2.10:21000"], wan_addresses = ["203.0.113.7:21000"] },
//	    { name = "api", subset = "v1", namespace = "team", addresses = ["10.0.1.10:21000"] },
//	  ]
//	  gateways = [
//	    { datacenter = "dc1", addresses = ["10.0.1.5:8443"], wan_addresses = ["198.51.100.5:8443"] },
//	  ]
//	  servers = ["10.0.1.2:8503"]
//	  wan_federation {
//	    servers = [{ node = "dc1-server-1", address = "10.0.1.2:8300" }]
//	  }
//	  peers = [
//	    { name = "webstuff", trust_domain = "...consul", name_at_peer = "dc1-cluster", gateways = ["192.0.2.9:8443"],
//	      imports = ["billing", "team/ledger"] },
//	  ]
//	}
//
// JSON and YAML use the same keys. Several topology documents merge into one
// View: datacenter, partition and trust_domain must agree, rows add up, a
// peer is listed once. This package checks what a file can get wrong on its
// own (missing names, malformed addresses, fields that go together).
//
// Static is the mesh.Source of files: LoadStatic loads them and NewStatic
// builds one from a loaded Set, adding the config entries to the topology's
// View and applying the View's rules; StaticView does the same for a View
// built in Go.
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/decode"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/modes"
)

// Set is everything loaded from a group of files.
type Set struct {
	// ProxyDefaults is the proxy-defaults "global" entry, or nil.
	ProxyDefaults *api.ProxyConfigEntry
	// ServiceDefaults holds the service-defaults entries by service name,
	// namespace and partition.
	ServiceDefaults map[mesh.EntryKey]*api.ServiceConfigEntry
	// Mesh is the mesh entry, or nil.
	Mesh *api.MeshConfigEntry
	// ExportedServices holds the exported-services entries by partition
	// (the entry's Name; "default" when the file gives none): which
	// services of that partition peers may consume.
	ExportedServices map[string]*api.ExportedServicesConfigEntry
	// ServiceResolvers holds the service-resolver entries by service name,
	// namespace and partition: their subsets, DefaultSubset, Redirect,
	// Failover and ConnectTimeout.
	ServiceResolvers map[mesh.EntryKey]*api.ServiceResolverConfigEntry
	// ServiceRouters and ServiceSplitters hold the service-router and
	// service-splitter entries by service name, namespace and partition:
	// how an http, http2 or grpc service's requests are routed and split.
	ServiceRouters   map[mesh.EntryKey]*api.ServiceRouterConfigEntry
	ServiceSplitters map[mesh.EntryKey]*api.ServiceSplitterConfigEntry
	// SamenessGroups holds the sameness-group entries by name (a Consul
	// Enterprise feature: Consul CE refuses them, and resolvers naming one).
	SamenessGroups map[string]*api.SamenessGroupConfigEntry
	// Other holds config entries of other kinds (service-intentions, ...),
	// checked as strictly but not used by meshgate.
	Other []api.ConfigEntry
	// Services are the agent service definitions, in file order.
	Services []Service
	// Topology is what the topology documents say, decoded into the model
	// and merged (see the topology document's description in topology.go's
	// doc), or nil if there were none: where services, gateways, peers and
	// servers are, without the config entries, which the Set holds apart.
	Topology *mesh.View
}

// Service is one agent service definition and where it came from.
type Service struct {
	*api.AgentServiceRegistration
	File string
	Line int
}

// Origin returns "file:line" for messages.
func (s Service) Origin() string { return fmt.Sprintf("%s:%d", s.File, s.Line) }

// Problem is one problem found in a file: where (File, Line, and Path, the
// key path such as "Proxy.Upstreams[1].MeshGateway") and what (Msg). Load
// and Parse return every problem at once, as a *multierror.Error whose
// entries are *Problem values, so callers can inspect them with errors.As or
// through the Errors field.
type Problem = decode.Error

// ErrTooLarge is wrapped by the error of a YAML file that expands, through
// aliases, beyond a bound on values or nesting.
var ErrTooLarge = decode.ErrYAMLTooLarge

// Load reads every path: a file, or a directory whose *.hcl, *.json, *.yaml
// and *.yml files are read in name order (not recursively). All problems in
// all files are returned together as a *multierror.Error whose entries are
// *Problem values ("file:line: path: message").
func Load(paths ...string) (*Set, error) {
	var files []string
	var errs []error
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var found []string
		for _, e := range entries {
			if !e.IsDir() && decode.FormatOf(e.Name()) != "" {
				found = append(found, filepath.Join(p, e.Name()))
			}
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	set := newSet()
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := set.add(f, src); err != nil {
			errs = append(errs, err)
		}
	}
	if err := problems.Join(errs...); err != nil {
		return nil, err
	}
	return set, nil
}

// Parse reads one file's contents; name gives the format by its extension
// (.hcl, .json, .yaml, .yml) and names the file in errors.
func Parse(name string, src []byte) (*Set, error) {
	set := newSet()
	if err := set.add(name, src); err != nil {
		return nil, problems.Join(err)
	}
	return set, nil
}

func newSet() *Set {
	return &Set{ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{}, ServiceResolvers: map[mesh.EntryKey]*api.ServiceResolverConfigEntry{},
		SamenessGroups: map[string]*api.SamenessGroupConfigEntry{}, ExportedServices: map[string]*api.ExportedServicesConfigEntry{},
		ServiceRouters: map[mesh.EntryKey]*api.ServiceRouterConfigEntry{}, ServiceSplitters: map[mesh.EntryKey]*api.ServiceSplitterConfigEntry{}}
}

func (s *Set) add(file string, src []byte) error {
	f := decode.FormatOf(file)
	if f == "" {
		return fmt.Errorf("%s: unknown file type (want .hcl, .json, .yaml or .yml)", file)
	}
	docs, err := decode.Parse(f, src)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	d := newDecoder(file)
	for _, doc := range docs {
		s.addDocument(d, doc)
	}
	return d.Err()
}

// The top-level keys that say what a document is.
const (
	keyKind          = "Kind"
	keyService       = "service"
	keyServices      = "services"
	keyConfigEntries = "config_entries"
	keyTopology      = "topology"
)

func (s *Set) addDocument(d *decode.Decoder, doc *decode.Node) {
	if doc.Kind != decode.Map {
		d.Errorf(doc.Line, "", "want a config entry, service definition or topology, got a %s", kindName(doc))
		return
	}
	switch {
	case doc.Get(keyKind) != nil:
		s.addEntry(d, doc, "")
	case doc.Get(keyService) != nil || doc.Get(keyServices) != nil || doc.Get(keyConfigEntries) != nil || doc.Get(keyTopology) != nil:
		for _, k := range doc.Keys {
			switch decode.Normalize(k.Name) {
			case decode.Normalize(keyService), decode.Normalize(keyServices):
				s.addServices(d, k)
			case decode.Normalize(keyConfigEntries):
				s.addBootstrap(d, k)
			case decode.Normalize(keyTopology):
				s.addTopology(d, k.Val)
			default:
				d.Errorf(k.Line, "", "unknown top-level key %q (want %s, %s, %s or %s)", k.Name, keyService, keyServices, keyConfigEntries, keyTopology)
			}
		}
	default:
		d.Errorf(doc.Line, "", "neither a config entry (no %q key) nor a service definition, config_entries or topology; keys: %s", keyKind, keyNames(doc))
	}
}

func (s *Set) addServices(d *decode.Decoder, k decode.Key) {
	items := []*decode.Node{k.Val}
	if k.Val.Kind == decode.List {
		items = k.Val.Items
	}
	for i, item := range items {
		reg := &api.AgentServiceRegistration{}
		path := k.Name
		if len(items) > 1 {
			path = fmt.Sprintf("%s[%d]", k.Name, i)
		}
		before := d.Err()
		d.Decode(item, reg, path)
		if reg.Name == "" {
			d.Errorf(item.Line, path, "service definition has no name")
		}
		if reg.Kind != "" && reg.Kind != api.ServiceKindTypical && reg.Kind != api.ServiceKindConnectProxy && reg.Kind != api.ServiceKindMeshGateway &&
			reg.Kind != api.ServiceKindTerminatingGateway && reg.Kind != api.ServiceKindIngressGateway && reg.Kind != api.ServiceKindAPIGateway {
			d.Errorf(item.Line, path, "unknown service kind %q", reg.Kind)
		}
		if reg.Kind == api.ServiceKindConnectProxy && (reg.Proxy == nil || reg.Proxy.DestinationServiceName == "") {
			d.Errorf(item.Line, path, "connect-proxy %q has no proxy.destination_service_name", reg.Name)
		}
		if problems.Count(d.Err()) == problems.Count(before) {
			s.Services = append(s.Services, Service{AgentServiceRegistration: reg, File: d.File, Line: item.Line})
		}
	}
}

// addBootstrap reads an agent's config_entries { bootstrap = [ ... ] }.
func (s *Set) addBootstrap(d *decode.Decoder, k decode.Key) {
	n := k.Val
	if n.Kind == decode.List && len(n.Items) == 1 {
		n = n.Items[0]
	}
	if n.Kind != decode.Map {
		d.Errorf(k.Line, k.Name, "want a block with a bootstrap list")
		return
	}
	for _, bk := range n.Keys {
		if decode.Normalize(bk.Name) != "bootstrap" {
			d.Errorf(bk.Line, k.Name, "unknown key %q (want \"bootstrap\")", bk.Name)
			continue
		}
		items := []*decode.Node{bk.Val}
		if bk.Val.Kind == decode.List {
			items = bk.Val.Items
		}
		for i, item := range items {
			s.addEntry(d, item, fmt.Sprintf("%s.bootstrap[%d]", k.Name, i))
		}
	}
}

func (s *Set) addEntry(d *decode.Decoder, n *decode.Node, path string) {
	if n.Kind != decode.Map {
		d.Errorf(n.Line, path, "want a config entry block, got a %s", kindName(n))
		return
	}
	kindNode := n.Get(keyKind)
	kind, _ := scalarString(kindNode)
	name, _ := scalarString(n.Get("Name"))
	entry, err := api.MakeConfigEntry(kind, name)
	if err != nil || kindNode == nil {
		d.Errorf(n.Line, path, "unknown config entry Kind %q%s", kind, suggestKind(kind))
		return
	}
	drop := []string{keyKind}
	if kind == api.MeshConfig {
		drop = append(drop, "Name") // a fixed name, no Name field
	}
	before := problems.Count(d.Err())
	d.Decode(n.Without(drop...), entry, join(path, kind))
	if problems.Count(d.Err()) != before {
		return
	}
	line := n.Line
	switch e := entry.(type) {
	case *api.ProxyConfigEntry:
		if e.Name != api.ProxyConfigGlobal {
			d.Errorf(line, path, "proxy-defaults must be named %q, not %q", api.ProxyConfigGlobal, e.Name)
			return
		}
		if s.ProxyDefaults != nil {
			d.Errorf(line, path, "a second proxy-defaults entry")
			return
		}
		s.ProxyDefaults = e
	case *api.ServiceConfigEntry:
		if e.Name == "" {
			d.Errorf(line, path, "service-defaults has no Name")
			return
		}
		k := mesh.KeyOf(e.Name, e.Namespace, e.Partition)
		if s.ServiceDefaults[k] != nil {
			d.Errorf(line, path, "a second service-defaults for %s", k)
			return
		}
		s.ServiceDefaults[k] = e
	case *api.ServiceResolverConfigEntry:
		addKeyed(d, line, path, s.ServiceResolvers, e, resolverProblems)
	case *api.ServiceRouterConfigEntry:
		addKeyed(d, line, path, s.ServiceRouters, e, routerProblems)
	case *api.ServiceSplitterConfigEntry:
		addKeyed(d, line, path, s.ServiceSplitters, e, splitterProblems)
	case *api.SamenessGroupConfigEntry:
		switch {
		case e.Name == "":
			d.Errorf(line, path, "sameness-group has no Name")
		case s.SamenessGroups[e.Name] != nil:
			d.Errorf(line, path, "a second sameness-group %q", e.Name)
		default:
			for _, msg := range samenessGroupProblems(e, s.SamenessGroups) {
				d.Errorf(line, path, "sameness-group %q: %s", e.Name, msg)
			}
			s.SamenessGroups[e.Name] = e
		}
	case *api.MeshConfigEntry:
		if s.Mesh != nil {
			d.Errorf(line, path, "a second mesh entry")
			return
		}
		s.Mesh = e
	case *api.ExportedServicesConfigEntry:
		// Its Name is the partition whose services it exports.
		e.Name = tenancy.OrDefault(e.Name)
		if s.ExportedServices[e.Name] != nil {
			d.Errorf(line, path, "a second exported-services entry for partition %q", e.Name)
			return
		}
		for i, svc := range e.Services {
			if svc.Name == "" {
				d.Errorf(line, path, "exported-services: Services[%d] has no Name", i)
			}
			for _, c := range svc.Consumers {
				if c.Peer == "" && c.Partition == "" && c.SamenessGroup == "" {
					d.Errorf(line, path, "exported-services: service %q has a consumer with no Peer, Partition or SamenessGroup", svc.Name)
				}
			}
		}
		s.ExportedServices[e.Name] = e
	default:
		s.Other = append(s.Other, entry)
	}
}

// addKeyed stores e, a config entry Consul keeps one of per service name,
// namespace and partition, in m: an entry without a Name, or a second one
// for the same key, is an error at line; so is each of problems(e), the
// checks Consul makes before it stores one.
func addKeyed[T api.ConfigEntry](d *decode.Decoder, line int, path string, m map[mesh.EntryKey]T, e T, problems func(T) []string) {
	k := mesh.KeyOf(e.GetName(), e.GetNamespace(), e.GetPartition())
	kind := e.GetKind()
	switch _, dup := m[k]; {
	case e.GetName() == "":
		d.Errorf(line, path, "%s has no Name", kind)
	case dup:
		d.Errorf(line, path, "a second %s for %s", kind, k)
	default:
		for _, msg := range problems(e) {
			d.Errorf(line, path, "%s %q: %s", kind, e.GetName(), msg)
		}
		m[k] = e
	}
}

// resolverProblems checks what Consul checks of a service-resolver before
// storing it (ServiceResolverConfigEntry.Validate), as far as routing
// depends on it. Partitions, namespaces, sameness groups and failover
// policies, which Consul CE refuses as Enterprise features, are accepted:
// meshgate plans them as Consul Enterprise would.
func resolverProblems(e *api.ServiceResolverConfigEntry) []string {
	var out []string
	if e.DefaultSubset != "" && !hasSubset(e, e.DefaultSubset) {
		out = append(out, fmt.Sprintf("DefaultSubset %q is not one of its Subsets", e.DefaultSubset))
	}
	for name := range e.Subsets {
		if !validSubsetName(name) {
			out = append(out, fmt.Sprintf("subset name %q: want lower-case letters, digits and dashes", name))
		}
	}
	if r := e.Redirect; r != nil {
		if msg := redirectProblem(e, r); msg != "" {
			out = append(out, msg)
		}
	}
	keys := make([]string, 0, len(e.Failover))
	for k := range e.Failover {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		for _, msg := range failoverProblems(e, e.Failover[key]) {
			out = append(out, fmt.Sprintf("Failover[%q]: %s", key, msg))
		}
		if key != "*" && !hasSubset(e, key) {
			out = append(out, fmt.Sprintf("Failover[%q]: want \"*\" or one of its Subsets", key))
		}
	}
	if e.ConnectTimeout < 0 {
		out = append(out, fmt.Sprintf("ConnectTimeout %s is negative", e.ConnectTimeout))
	}
	return out
}

// redirectProblem is Consul's first objection to a resolver's Redirect, or
// "".
func redirectProblem(e *api.ServiceResolverConfigEntry, r *api.ServiceResolverRedirect) string {
	switch {
	case *r == api.ServiceResolverRedirect{}:
		return "Redirect is empty"
	case len(e.Failover) > 0:
		return "Redirect and Failover cannot both be set"
	case r.SamenessGroup != "" && r.ServiceSubset != "":
		return "Redirect.SamenessGroup cannot be set with Redirect.ServiceSubset"
	case r.SamenessGroup != "" && r.Partition != "":
		return "Redirect.SamenessGroup cannot be set with Redirect.Partition"
	case r.SamenessGroup != "" && r.Datacenter != "":
		return "Redirect.SamenessGroup cannot be set with Redirect.Datacenter"
	case r.Peer != "" && r.ServiceSubset != "":
		return "Redirect.Peer cannot be set with Redirect.ServiceSubset"
	case r.Peer != "" && r.Partition != "":
		return "Redirect.Partition cannot be set with Redirect.Peer"
	case r.Peer != "" && r.Datacenter != "":
		return "Redirect names both a Datacenter and a Peer"
	case r.Service == "" && (r.ServiceSubset != "" || r.Namespace != "" || r.Partition != "" || r.Peer != ""):
		return "Redirect.ServiceSubset, Namespace, Partition and Peer need Redirect.Service"
	case r.ServiceSubset != "" && r.Service == e.Name && !hasSubset(e, r.ServiceSubset):
		return fmt.Sprintf("Redirect.ServiceSubset %q is not one of its Subsets", r.ServiceSubset)
	}
	return ""
}

// failoverProblems checks one Failover entry as Consul does.
func failoverProblems(e *api.ServiceResolverConfigEntry, f api.ServiceResolverFailover) []string {
	var out []string
	if f.Service == "" && f.ServiceSubset == "" && f.Namespace == "" && len(f.Datacenters) == 0 && len(f.Targets) == 0 && f.SamenessGroup == "" {
		return []string{"one of Service, ServiceSubset, Namespace, Targets, SamenessGroup, or Datacenters is required"}
	}
	if p := f.Policy; p != nil && p.Mode != "" && p.Mode != "sequential" && p.Mode != "order-by-locality" {
		out = append(out, fmt.Sprintf("Policy.Mode %q: want \"sequential\" or \"order-by-locality\"", p.Mode))
	}
	if f.ServiceSubset != "" && (f.Service == "" || f.Service == e.Name) && !hasSubset(e, f.ServiceSubset) {
		out = append(out, fmt.Sprintf("ServiceSubset %q is not one of %q's Subsets", f.ServiceSubset, e.Name))
	}
	for _, bad := range []struct {
		both bool
		msg  string
	}{
		{f.SamenessGroup != "" && len(f.Datacenters) > 0, "SamenessGroup cannot be set with Datacenters"},
		{f.SamenessGroup != "" && f.ServiceSubset != "", "SamenessGroup cannot be set with ServiceSubset"},
		{f.SamenessGroup != "" && len(f.Targets) > 0, "SamenessGroup cannot be set with Targets"},
		{len(f.Datacenters) > 0 && len(f.Targets) > 0, "Targets cannot be set with Datacenters"},
		{f.ServiceSubset != "" && len(f.Targets) > 0, "Targets cannot be set with ServiceSubset"},
		{f.Service != "" && len(f.Targets) > 0, "Targets cannot be set with Service"},
	} {
		if bad.both {
			out = append(out, bad.msg)
		}
	}
	for i, t := range f.Targets {
		var msg string
		switch {
		case t.Peer != "" && t.ServiceSubset != "":
			msg = "Peer cannot be set with ServiceSubset"
		case t.Peer != "" && t.Partition != "":
			msg = "Partition cannot be set with Peer"
		case t.Peer != "" && t.Datacenter != "":
			msg = "Peer cannot be set with Datacenter"
		case t.Partition != "" && t.Datacenter != "":
			msg = "Partition cannot be set with Datacenter"
		case t.ServiceSubset != "" && (t.Service == "" || t.Service == e.Name) && !hasSubset(e, t.ServiceSubset):
			msg = fmt.Sprintf("ServiceSubset %q is not one of %q's Subsets", t.ServiceSubset, e.Name)
		}
		if msg != "" {
			out = append(out, fmt.Sprintf("Targets[%d]: %s", i, msg))
		}
	}
	for _, dc := range f.Datacenters {
		if dc == "" {
			out = append(out, "Datacenters: an empty datacenter")
		}
	}
	return out
}

// samenessGroupProblems checks a sameness-group entry: each member is one
// partition or one peer, named once, and one group of the files at most is
// the default for failover.
func samenessGroupProblems(e *api.SamenessGroupConfigEntry, others map[string]*api.SamenessGroupConfigEntry) []string {
	var out []string
	seen := map[api.SamenessGroupMember]bool{}
	for i, m := range e.Members {
		switch {
		case (m.Partition == "") == (m.Peer == ""):
			out = append(out, fmt.Sprintf("Members[%d]: want exactly one of Partition and Peer", i))
		case seen[m]:
			out = append(out, fmt.Sprintf("Members[%d]: %s is listed twice", i, describeMember(m)))
		}
		seen[m] = true
	}
	if e.DefaultForFailover {
		for name, o := range others {
			if o.DefaultForFailover {
				out = append(out, fmt.Sprintf("DefaultForFailover: sameness-group %q is the default already", name))
			}
		}
	}
	return out
}

func describeMember(m api.SamenessGroupMember) string {
	if m.Peer != "" {
		return fmt.Sprintf("peer %q", m.Peer)
	}
	return fmt.Sprintf("partition %q", m.Partition)
}

func hasSubset(e *api.ServiceResolverConfigEntry, name string) bool {
	_, ok := e.Subsets[name]
	return ok
}

// validSubsetName is Consul's rule for subset names, which become an SNI
// label: lower-case alphanumerics and dashes, not starting or ending with a
// dash.
func validSubsetName(name string) bool {
	if name == "" || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func suggestKind(kind string) string {
	known := []string{api.ServiceDefaults, api.ProxyDefaults, api.MeshConfig, api.ServiceRouter, api.ServiceSplitter,
		api.ServiceResolver, api.IngressGateway, api.TerminatingGateway, api.ServiceIntentions, api.ExportedServices}
	for _, k := range known {
		if strings.EqualFold(strings.ReplaceAll(k, "-", ""), strings.ReplaceAll(strings.ReplaceAll(kind, "-", ""), "_", "")) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return fmt.Sprintf(" (known: %s)", strings.Join(known, ", "))
}

func scalarString(n *decode.Node) (string, bool) {
	if n == nil || n.Kind != decode.Scalar {
		return "", false
	}
	s, ok := n.Value.(string)
	return s, ok
}

func kindName(n *decode.Node) string {
	switch n.Kind {
	case decode.List:
		return "list"
	case decode.Scalar:
		return "value"
	case decode.Null:
		return "null"
	}
	return "block"
}

func keyNames(n *decode.Node) string {
	var names []string
	for _, k := range n.Keys {
		names = append(names, fmt.Sprintf("%q", k.Name))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// newDecoder returns a decoder that applies Consul's rules as it goes.
func newDecoder(file string) *decode.Decoder {
	return &decode.Decoder{
		File: file,
		// An agent service definition may carry its ACL token; it is read
		// by Consul's agent, never needed here, and never kept or logged.
		Ignore: []string{"token"},
		Checks: map[reflect.Type]decode.Check{
			reflect.TypeFor[api.MeshGatewayMode](): func(v reflect.Value) error {
				return modes.Validate(v.Interface().(api.MeshGatewayMode))
			},
			reflect.TypeFor[api.Upstream](): func(v reflect.Value) error {
				return modes.CheckUpstream(v.Interface().(api.Upstream))
			},
		},
	}
}
