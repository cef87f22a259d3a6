package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/fullmatch"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/mesh"
)

// RequestSource is who an HTTP request comes from, as Consul's intentions
// name a source: a service, in a namespace and partition, of a cluster
// peer or (Peer empty) of the local cluster.
type RequestSource struct {
	Service, Namespace, Partition, Peer string
	// Via is the SPIFFE ID of the local mesh gateway the request came
	// through, for a peer's request; empty otherwise.
	Via string
}

// String names the source as messages do.
func (s RequestSource) String() string {
	out := s.Service
	if ns := tenancy.OrDefault(s.Namespace); ns != tenancy.Default {
		out += " (namespace " + ns + ")"
	}
	if s.Peer != "" {
		out += " of peer " + s.Peer + " via " + s.Via
	}
	return out
}

// XFCCHeader is the header in which a mesh gateway that terminates a
// peer's request names the peer's client (see package routing/l7).
const XFCCHeader = "X-Forwarded-Client-Cert"

// SourceOf returns the source of a request that arrived over mTLS whose
// client chain has been verified (state is its connection's): the service
// the client certificate names, in v's trust domain; or, when the client
// is a mesh gateway of v's trust domain
// (spiffe://<td>/gateway/mesh/dc/<dc>), the service named by the first
// element of the X-Forwarded-Client-Cert header the gateway set, which
// must be in the trust domain of one of v's peers. This is how Consul's
// sidecars tell a peer's request apart for L7 intentions; the header of
// any other client is ignored.
func SourceOf(state *tls.ConnectionState, header http.Header, v *mesh.View) (RequestSource, error) {
	trustDomain := v.TrustDomain
	if state == nil || len(state.PeerCertificates) == 0 {
		return RequestSource{}, errors.New("sidecar: the request came without a client certificate")
	}
	uris := state.PeerCertificates[0].URIs
	if len(uris) != 1 {
		return RequestSource{}, fmt.Errorf("sidecar: the client certificate names %v, not one SPIFFE ID", uris)
	}
	u := uris[0]
	if strings.EqualFold(u.Host, trustDomain) && strings.HasPrefix(u.Path, "/gateway/mesh/") {
		return peerSourceOf(u.String(), header.Get(XFCCHeader), v)
	}
	if !strings.EqualFold(u.Host, trustDomain) {
		return RequestSource{}, fmt.Errorf("sidecar: the client %s is not in trust domain %s", u, trustDomain)
	}
	return serviceOf(u)
}

// peerSourceOf reads the peer's client from the XFCC header the local
// gateway via set.
func peerSourceOf(via, xfcc string, v *mesh.View) (RequestSource, error) {
	first, _, _ := strings.Cut(xfcc, ",")
	var uri string
	for _, kv := range strings.Split(first, ";") {
		if k, val, ok := strings.Cut(kv, "="); ok && strings.EqualFold(k, "URI") {
			uri = val
		}
	}
	if uri == "" {
		return RequestSource{}, fmt.Errorf("sidecar: mesh gateway %s forwarded no client URI in %s", via, XFCCHeader)
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "spiffe" {
		return RequestSource{}, fmt.Errorf("sidecar: mesh gateway %s forwarded client URI %q, not a SPIFFE ID", via, uri)
	}
	src, err := serviceOf(u)
	if err != nil {
		return src, err
	}
	for name, p := range v.Peers {
		if p.TrustDomain != "" && strings.EqualFold(p.TrustDomain, u.Host) {
			src.Peer, src.Via = name, via
			return src, nil
		}
	}
	return RequestSource{}, fmt.Errorf("sidecar: mesh gateway %s forwarded client %s, whose trust domain is no peer's", via, uri)
}

// serviceOf parses a service's SPIFFE ID:
// spiffe://<td>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>.
func serviceOf(u *url.URL) (RequestSource, error) {
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	src := RequestSource{Partition: tenancy.Default}
	if len(parts) == 8 && parts[0] == "ap" {
		src.Partition, parts = parts[1], parts[2:]
	}
	if len(parts) != 6 || parts[0] != "ns" || parts[2] != "dc" || parts[4] != "svc" {
		return RequestSource{}, fmt.Errorf("sidecar: %s is not a service's SPIFFE ID", u)
	}
	src.Namespace, src.Service = parts[1], parts[5]
	return src, nil
}

// Authorize decides a request from src to the destination of entry (nil:
// no intentions), as Consul's sidecar does: the source intention of
// highest precedence that names src decides (an exact service name before
// "*"); with Permissions, the first that matches the request decides; when
// nothing decides, defaultAllow does (Consul's default intention policy:
// the ACL default policy, or allow without ACLs). A permission that also
// requires a JWT never matches: that check is not made here. It returns
// whether the request is allowed and why.
func Authorize(entry *api.ServiceIntentionsConfigEntry, src RequestSource, r *http.Request, defaultAllow bool) (bool, string) {
	var best *api.SourceIntention
	for _, s := range sourcesOf(entry) {
		if !sourceMatches(s, src) {
			continue
		}
		if best == nil || (best.Name == "*" && s.Name != "*") {
			best = s
		}
	}
	deflt := func(why string) (bool, string) {
		if defaultAllow {
			return true, why + ": the default, allow"
		}
		return false, why + ": the default, deny"
	}
	switch {
	case best == nil:
		return deflt("no intention names " + src.String())
	case len(best.Permissions) == 0:
		return best.Action == api.IntentionActionAllow, fmt.Sprintf("intention from %s: %s", best.Name, best.Action)
	}
	for i, p := range best.Permissions {
		if p.JWT == nil && permissionMatches(p.HTTP, r) {
			return p.Action == api.IntentionActionAllow, fmt.Sprintf("intention from %s, permission %d: %s", best.Name, i+1, p.Action)
		}
	}
	return deflt(fmt.Sprintf("intention from %s: no permission matches %s %s", best.Name, r.Method, r.URL.Path))
}

func sourcesOf(e *api.ServiceIntentionsConfigEntry) []*api.SourceIntention {
	if e == nil {
		return nil
	}
	return e.Sources
}

func sourceMatches(s *api.SourceIntention, src RequestSource) bool {
	return s.Peer == src.Peer &&
		(s.Name == "*" || s.Name == src.Service) &&
		(s.Namespace == "*" || tenancy.OrDefault(s.Namespace) == tenancy.OrDefault(src.Namespace)) &&
		(s.Partition == "*" || tenancy.OrDefault(s.Partition) == tenancy.OrDefault(src.Partition) || src.Peer != "")
}

// permissionMatches reports whether r meets an intention's HTTP permission
// (nil matches every request).
func permissionMatches(p *api.IntentionHTTPPermission, r *http.Request) bool {
	if p == nil {
		return true
	}
	path := r.URL.Path
	switch {
	case p.PathExact != "" && path != p.PathExact,
		p.PathPrefix != "" && !strings.HasPrefix(path, p.PathPrefix),
		p.PathRegex != "" && !fullmatch.Match(p.PathRegex, path),
		len(p.Methods) > 0 && !slices.Contains(p.Methods, r.Method):
		return false
	}
	for _, h := range p.Header {
		if headerMatches(h, r.Header.Values(h.Name)) == h.Invert {
			return false
		}
	}
	return true
}

func headerMatches(h api.IntentionHTTPHeaderPermission, values []string) bool {
	if len(values) == 0 {
		return false
	}
	v := strings.Join(values, ",")
	want := func(s string) string { return s }
	if h.IgnoreCase {
		v, want = strings.ToLower(v), strings.ToLower
	}
	switch {
	case h.Exact != "":
		return v == want(h.Exact)
	case h.Prefix != "":
		return strings.HasPrefix(v, want(h.Prefix))
	case h.Suffix != "":
		return strings.HasSuffix(v, want(h.Suffix))
	case h.Contains != "":
		return strings.Contains(v, want(h.Contains))
	case h.Regex != "":
		return fullmatch.Match(h.Regex, v)
	}
	return true // Present
}

// Intentions enforces the L7 intentions of one destination service on the
// HTTP requests its instance receives, peers' requests included, kept
// current from the agent.
type Intentions struct {
	client  *api.Client
	service string
	entry   atomic.Pointer[api.ServiceIntentionsConfigEntry]
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errMu   sync.Mutex
	err     error
}

// WatchIntentions reads service's service-intentions entry from the agent
// and keeps it current until Close. It fails if the first read fails.
func WatchIntentions(ctx context.Context, client *api.Client, service string) (*Intentions, error) {
	in := &Intentions{client: client, service: service}
	ctx, in.cancel = context.WithCancel(ctx)
	index, err := in.load(ctx, 0)
	if err != nil {
		in.cancel()
		return nil, err
	}
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		keepLoading(ctx, index, in.load, func(err error) {
			in.errMu.Lock()
			in.err = err
			in.errMu.Unlock()
		})
	}()
	return in, nil
}

func (in *Intentions) load(ctx context.Context, index uint64) (uint64, error) {
	e, meta, err := in.client.ConfigEntries().Get(api.ServiceIntentions, in.service, (&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
	var se api.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		in.entry.Store(nil)
		if meta != nil {
			return meta.LastIndex, nil
		}
		return index, nil
	case err != nil:
		return index, fmt.Errorf("sidecar: reading the intentions of %q: %w", in.service, err)
	}
	entry, ok := e.(*api.ServiceIntentionsConfigEntry)
	if !ok {
		return index, fmt.Errorf("sidecar: the intentions of %q are a %T", in.service, e)
	}
	in.entry.Store(entry)
	return meta.LastIndex, nil
}

// Entry returns the current service-intentions entry, or nil if there is
// none.
func (in *Intentions) Entry() *api.ServiceIntentionsConfigEntry { return in.entry.Load() }

// Err returns the watch's last error, or nil.
func (in *Intentions) Err() error {
	in.errMu.Lock()
	defer in.errMu.Unlock()
	return in.err
}

// Close stops watching.
func (in *Intentions) Close() {
	in.cancel()
	in.wg.Wait()
}

// Handler serves next the requests the intentions allow, and answers the
// others 403 Forbidden with the reason: the source as SourceOf finds it in
// src's current view (the local trust domain, the peers'), decided by
// Authorize with defaultAllow.
func (in *Intentions) Handler(next http.Handler, src mesh.Source, defaultAllow bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, err := SourceOf(r.TLS, r.Header, src.View())
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		if ok, why := Authorize(in.Entry(), from, r, defaultAllow); !ok {
			http.Error(w, fmt.Sprintf("sidecar: %s may not %s %s of %s: %s", from, r.Method, r.URL.Path, in.service, why), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
