// Command sidecar is the sidecar side of the mesh-gateway modes without
// Envoy: it serves a connect-proxy registration. It listens on each
// upstream's local_bind_port and carries each plain TCP connection from
// the local application over the upstream's planned path (direct, through
// the local mesh gateway, or through the destination's) as mTLS with the
// service's leaf certificate, checking the destination's SPIFFE identity.
// When the registration has a port and a local_service_port (a
// sidecar_service gets its parent's port), it also listens there, as
// Envoy's public listener does (on the proxy's address, or every address):
// it takes the mesh's mTLS connections with the service's leaf, lets in only
// the clients Consul's intentions allow (the agent decides at each
// handshake), and forwards them to local_service_address:local_service_port
// (127.0.0.1 by default).
//
//	go run ./examples/sidecar -proxy-id web-sidecar-proxy   # a registration on the local agent (CONSUL_HTTP_ADDR, ...)
//	go run ./examples/sidecar -proxy-id web-sidecar-proxy -config web.hcl   # the registration from the files the agent takes
//
// With -config the registration comes from Consul service definition
// files (a connect-proxy service, or a service's connect.sidecar_service,
// whose proxy is "<name>-sidecar-proxy"), reread on SIGHUP; the view and
// the certificates still come from the agent.
//
// The mode and the layer that decided it are logged once per upstream, and
// again when they change. Every connection is planned from the current
// config entries and the current registration, so a change to
// proxy-defaults, service-defaults or the registration's modes applies to
// the next connection, and the listeners follow it: an upstream or public
// port added later is listened on, one dropped is closed (the connections
// it accepted go on). SIGINT or SIGTERM stop it.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/examples/internal/admin"
	"github.com/meshgate/meshgate/examples/internal/cli"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewayhealth"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/internal/fipsmode"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(cli.ExitCode(os.Stderr, "sidecar", run(ctx, os.Args[1:], os.Stderr, nil)))
}

// run serves until ctx ends; ready, if not nil, is closed once every
// upstream listens.
func run(ctx context.Context, args []string, logOut io.Writer, ready chan<- struct{}) error {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(logOut)
	proxyID := fs.String("proxy-id", "", "the connect-proxy to serve: its ID on the local agent, or with -config its ID or name in the files (required)")
	var configs stringList
	fs.Var(&configs, "config", "read the registration from this Consul service definition file or directory instead of the agent (repeatable); SIGHUP rereads")
	connectTimeout := fs.Duration("connect-timeout", sidecar.DefaultConnectTimeout, "bound on each connect and TLS handshake")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text (logfmt) or json, for the diagnostic log and the access log")
	accessLog := fs.String("access-log", "", "write one line per upstream connection, naming the chain target that carried it, to this file (- for standard output); off by default")
	adminAddr := fs.String("admin", "", "serve /metrics, /ready and /debug/pprof/ on this address, such as 127.0.0.1:19001; off by default (keep it off public interfaces)")
	probeInterval := fs.Duration("probe-interval", gatewayhealth.DefaultInterval, "probe the gateways of other datacenters and peers this often (a TCP connect; every quarter of it while one does not answer): those that do not answer are left out, critical ones that do are used; 0 turns probing off")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected arguments %q", fs.Args())
	}
	if *proxyID == "" {
		return cli.Usagef("-proxy-id is required")
	}
	newHandler, level, err := cli.Logging(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	log := slog.New(newHandler(logOut, level))
	var obs observer
	if *accessLog != "" {
		w, closeLog, err := admin.OpenLog(*accessLog)
		if err != nil {
			return err
		}
		defer closeLog()
		obs.access = slog.New(newHandler(w, slog.LevelInfo))
	}
	if *probeInterval < 0 {
		return cli.Usagef("-probe-interval %s: want 0 (off) or more", *probeInterval)
	}
	var serving atomic.Bool // for /ready
	var registry *prometheus.Registry
	if *adminAddr != "" {
		registry = admin.Registry()
		obs.metrics = newUpstreamMetrics(registry)
		readiness := &admin.Readiness{}
		readiness.Add("serving", func() error {
			if !serving.Load() {
				return errors.New("not serving: starting or draining")
			}
			return nil
		})
		stopAdmin, err := admin.Serve(*adminAddr, admin.Endpoint{Registry: registry, Ready: readiness}, log, "sidecar")
		if err != nil {
			return err
		}
		defer stopAdmin()
	}

	cfg := api.DefaultConfig()
	client, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var current atomic.Pointer[mesh.Instance]
	var reg mesh.Instance
	var hash string
	if len(configs) > 0 {
		reg, err = instanceFromFiles(configs, *proxyID)
	} else {
		reg, hash, err = readRegistration(ctx, client, *proxyID, "")
	}
	if err != nil {
		return err
	}
	current.Store(&reg)

	// The view takes consulview's 8 agent connections (the failover
	// targets it follows need their turns); the certificates (leaf and
	// roots) and the registration add three long polls of the sidecar's.
	src, err := consulview.New(ctx, client, consulview.Options{MaxConnections: consulview.AgentConnections(cfg, 0),
		Authorizer: consulview.TokenAuthorizer(cfg)})
	if err != nil {
		return err
	}
	defer src.Close()
	// Other datacenters' and peers' gateways probed: the Dialer reads this.
	view := mesh.Source(src)
	if *probeInterval > 0 {
		health := gatewayhealth.New(src, gatewayhealth.Options{Interval: *probeInterval, Timeout: min(gatewayhealth.DefaultTimeout, *probeInterval), Logger: log})
		defer health.Close()
		view = health
		if registry != nil {
			registry.MustRegister(gatewaymetrics.RemoteGatewaysCollector(func() []gatewaymetrics.RemoteGateway {
				var out []gatewaymetrics.RemoteGateway
				for _, g := range health.Gateways() {
					out = append(out, gatewaymetrics.RemoteGateway{Location: g.Location, Address: g.Address, Up: g.Up, Probe: g.Latency})
				}
				return out
			}))
		}
	}
	certs, err := sidecar.WatchCerts(ctx, client, reg.Service)
	if err != nil {
		return err
	}
	defer certs.Close()

	s := &server{src: src, view: view, certs: certs, client: client, current: &current, log: log, timeout: *connectTimeout, logged: map[int]string{},
		servedBy: map[int]string{}, fromAgent: len(configs) == 0, obs: &obs}
	binds := &binder{s: s, ctx: ctx, inbound: certs.AuthorizingServerTLSConfig(client, reg.Service), open: map[listener]net.Listener{}}
	defer binds.closeAll()
	if err := binds.sync(reg); err != nil {
		return err
	}
	upstreams, public := binds.serving()
	if upstreams == 0 && public == "" {
		return fmt.Errorf("registration %q has neither an upstream with a local_bind_port nor a port and local_service_port for the mesh to reach %s", *proxyID, reg.Service)
	}
	// A changed registration applies to the next connection, and opens or
	// closes listeners as its upstreams and port change.
	changed := func(inst mesh.Instance) {
		current.Store(&inst)
		if err := binds.sync(inst); err != nil {
			log.Error("sidecar: listening as the changed registration says", "err", err)
		}
	}
	if len(configs) > 0 {
		// Taken here, before anyone is told the sidecar is ready, so that a
		// SIGHUP sent at once is not lost.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go rereadOnHUP(ctx, hup, configs, *proxyID, changed, log)
	} else {
		go followRegistration(ctx, client, *proxyID, hash, changed, log)
	}
	log.Info("sidecar: serving", "proxy_id", *proxyID, "service", reg.Service, "upstreams", upstreams, "public", public)
	serving.Store(true)
	defer serving.Store(false)
	if ready != nil {
		close(ready)
	}
	<-ctx.Done()
	return nil
}

// binder keeps the sidecar's listeners as the registration says: one on
// each upstream's local bind address and port, and the public one. On a
// change it opens what the registration adds and closes what it drops;
// connections already accepted go on.
type binder struct {
	s       *server
	ctx     context.Context
	inbound *tls.Config // the public listener's
	mu      sync.Mutex
	open    map[listener]net.Listener
	wg      sync.WaitGroup
}

// listener is one listener a registration calls for: an upstream's, or
// the public one.
type listener struct {
	public bool
	addr   string
}

// String names it in logs and errors: "upstream 127.0.0.1:9191",
// "public 0.0.0.0:21000".
func (l listener) String() string {
	if l.public {
		return "public " + l.addr
	}
	return "upstream " + l.addr
}

// listeners returns the listeners inst calls for, and the upstreams that
// have no local_bind_port.
func listeners(inst mesh.Instance) (want []listener, unbound []string) {
	for _, up := range inst.Proxy.Upstreams {
		if up.LocalBindPort == 0 {
			unbound = append(unbound, up.DestinationName)
			continue
		}
		host := up.LocalBindAddress
		if host == "" {
			host = "127.0.0.1"
		}
		want = append(want, listener{addr: net.JoinHostPort(host, strconv.Itoa(up.LocalBindPort))})
	}
	// The public listener, as Envoy's: on the proxy's address (every
	// address when it has none) and port, when there is a local
	// application to forward to.
	if inst.Port != 0 && inst.Proxy.LocalServicePort != 0 {
		host := inst.Address
		if host == "" {
			host = "0.0.0.0"
		}
		want = append(want, listener{public: true, addr: net.JoinHostPort(host, strconv.Itoa(inst.Port))})
	}
	return want, unbound
}

// sync opens and closes listeners to match inst. It returns what failed to
// open, every one named; the others are opened all the same.
func (b *binder) sync(inst mesh.Instance) error {
	want, unbound := listeners(inst)
	for _, name := range unbound {
		b.s.log.Warn("sidecar: upstream without a local_bind_port; skipped", "upstream", name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for l, ln := range b.open {
		if !slices.Contains(want, l) {
			ln.Close()
			delete(b.open, l)
			b.s.log.Info("sidecar: stopped listening", "listener", l.String())
		}
	}
	var errs []error
	for _, l := range want {
		if _, ok := b.open[l]; ok || b.ctx.Err() != nil {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l, err))
			continue
		}
		b.open[l] = ln
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			if l.public {
				b.s.serveInbound(b.ctx, ln, b.inbound)
			} else {
				b.s.serve(b.ctx, ln)
			}
		}()
		b.s.log.Debug("sidecar: listening", "listener", l.String())
	}
	return problems.Join(errs...)
}

// serving returns how many upstream listeners are open, and the public
// listener's address ("" if none).
func (b *binder) serving() (upstreams int, public string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for l, ln := range b.open {
		if l.public {
			public = ln.Addr().String()
		} else {
			upstreams++
		}
	}
	return upstreams, public
}

// closeAll closes every listener and waits for their accept loops to end.
func (b *binder) closeAll() {
	b.mu.Lock()
	for l, ln := range b.open {
		ln.Close()
		delete(b.open, l)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// readRegistration reads the connect-proxy registration id from the agent,
// waiting (a blocking query) for a change from hash when hash is set.
func readRegistration(ctx context.Context, client *api.Client, id, hash string) (mesh.Instance, string, error) {
	svc, meta, err := client.Agent().Service(id, (&api.QueryOptions{WaitHash: hash, WaitTime: 5 * time.Minute}).WithContext(ctx))
	if err != nil {
		return mesh.Instance{}, hash, fmt.Errorf("reading registration %q: %w", id, err)
	}
	if svc.Kind != api.ServiceKindConnectProxy || svc.Proxy == nil {
		return mesh.Instance{}, hash, fmt.Errorf("registration %q is a %q service, not a connect-proxy", id, svc.Kind)
	}
	return mesh.Instance{Service: svc.Proxy.DestinationServiceName, Name: svc.Service, Namespace: svc.Namespace,
		Partition: svc.Partition, Proxy: svc.Proxy, Origin: "consul agent service " + svc.ID,
		Address: svc.Address, Port: svc.Port}, meta.LastContentHash, nil
}

// followRegistration calls changed with each new version of the agent's
// registration.
func followRegistration(ctx context.Context, client *api.Client, id, hash string, changed func(mesh.Instance), log *slog.Logger) {
	for ctx.Err() == nil {
		reg, next, err := readRegistration(ctx, client, id, hash)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("sidecar: following the registration; the last one read stays in force", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		if next != hash {
			changed(reg)
		}
		hash = next
	}
}

// instanceFromFiles loads Consul service definitions and returns the proxy
// named id (its ID or its name).
func instanceFromFiles(paths []string, id string) (mesh.Instance, error) {
	set, err := config.Load(paths...)
	if err != nil {
		return mesh.Instance{}, err
	}
	var names []string
	for _, svc := range set.Services {
		inst, ok := config.InstanceOf(svc.AgentServiceRegistration, svc.Origin())
		if !ok {
			continue
		}
		proxyID := svc.ID
		if svc.Kind != api.ServiceKindConnectProxy {
			proxyID = svc.ID + "-sidecar-proxy" // the ID the agent gives a sidecar_service
			if svc.ID == "" {
				proxyID = inst.Name
			}
		}
		if inst.Name == id || proxyID == id {
			return inst, nil
		}
		names = append(names, inst.Name)
	}
	return mesh.Instance{}, fmt.Errorf("no proxy %q in %s (proxies there: %q)", id, strings.Join(paths, ", "), names)
}

// rereadOnHUP reloads the registration from the files on SIGHUP and calls
// changed with it; a file that no longer loads leaves the registration in
// force.
func rereadOnHUP(ctx context.Context, hup <-chan os.Signal, paths []string, id string, changed func(mesh.Instance), log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		inst, err := instanceFromFiles(paths, id)
		if err != nil {
			log.Error("sidecar: reload failed; the registration in force stays", "err", err)
			continue
		}
		changed(inst)
		log.Info("sidecar: registration reloaded", "files", strings.Join(paths, ","))
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type server struct {
	src     *consulview.Source
	view    mesh.Source // src, with other datacenters' gateways probed
	certs   *sidecar.Certs
	client  *api.Client
	current *atomic.Pointer[mesh.Instance]
	log     *slog.Logger
	timeout time.Duration
	// fromAgent: the registration is the agent's, with central config
	// merged in.
	fromAgent bool

	obs *observer

	mu       sync.Mutex
	logged   map[int]string // local port -> the decision last logged
	servedBy map[int]string // local port -> the chain target of its last connection
}

// serve carries the local application's connections to one upstream.
func (s *server) serve(ctx context.Context, ln net.Listener) {
	port := ln.Addr().(*net.TCPAddr).Port
	s.acceptEach(ln, func(c net.Conn) { s.handle(ctx, c, port) })
}

// acceptEach handles each connection ln accepts in a goroutine of its own,
// until ln is closed.
func (s *server) acceptEach(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("sidecar: accept", "addr", ln.Addr().String(), "err", err)
			}
			return
		}
		go handle(c)
	}
}

// handle carries one local connection over its upstream's current plan.
func (s *server) handle(ctx context.Context, local net.Conn, port int) {
	// The agent copies central config into the registration it returns;
	// unmerged, the plan names the layer that decided.
	inst := *s.current.Load()
	if s.fromAgent {
		inst = consulview.UnmergeCentralConfig(s.src.View(), inst)
	}
	var up *api.Upstream
	for i := range inst.Proxy.Upstreams {
		if inst.Proxy.Upstreams[i].LocalBindPort == port {
			up = &inst.Proxy.Upstreams[i]
		}
	}
	if up == nil {
		s.log.Warn("sidecar: the registration no longer has an upstream on this port; connection closed", "port", port)
		local.Close()
		return
	}
	d := &sidecar.Dialer{Source: s.view, Certs: s.certs, Client: s.client, ConnectTimeout: s.timeout,
		Instance: inst}
	start := time.Now()
	remote, plan, err := d.Dial(ctx, *up)
	s.logDecision(port, plan)
	if err != nil {
		s.log.Warn("sidecar: upstream unreachable; connection closed", "upstream", plan.Upstream, "err", err)
		s.obs.unreachable(port, plan, start, err)
		local.Close()
		return
	}
	s.logServing(port, plan)
	s.obs.opened(plan)
	addr := remote.RemoteAddr()
	(&gateway.Forwarder{}).Start(local, remote, nil, func(st gateway.Stats) {
		s.obs.closed(port, plan, addr, start, st)
		s.log.Debug("sidecar: connection closed", "upstream", plan.Upstream, "target", served(plan), "sent", st.ClientToUpstream, "received", st.UpstreamToClient)
	})
}

// logServing logs, when it changes, which target of its chain carries an
// upstream's connections: a failover, and the return to the primary.
func (s *server) logServing(port int, p resolve.Plan) {
	target := served(p)
	s.mu.Lock()
	before, seen := s.servedBy[port]
	s.servedBy[port] = target
	s.mu.Unlock()
	switch {
	case !seen && p.Served == 0, before == target:
	case p.Served > 0:
		s.log.Warn("sidecar: upstream failed over", "upstream", p.Upstream, "target", target, "passed_over", strings.Join(p.PassedOver, "; "))
	default:
		s.log.Info("sidecar: upstream back on its primary target", "upstream", p.Upstream, "target", target)
	}
}

// serveInbound takes the mesh's connections for the service behind the
// proxy: mTLS with the service's leaf, only for the clients the intentions
// allow (the agent decides at each handshake), forwarded as plain TCP to the
// local application that the current registration names.
func (s *server) serveInbound(ctx context.Context, ln net.Listener, config *tls.Config) {
	s.acceptEach(ln, func(c net.Conn) { s.inbound(ctx, tls.Server(c, config)) })
}

// inbound completes one mesh connection's handshake and carries it to the
// local application.
func (s *server) inbound(ctx context.Context, c *tls.Conn) {
	hctx, cancel := context.WithTimeout(ctx, s.timeout)
	err := c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		// A connection closed before any byte is a TCP health check, such
		// as the one the agent gives a sidecar_service: Debug, not Info.
		level := slog.LevelInfo
		if errors.Is(err, io.EOF) {
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "sidecar: inbound connection refused", "remote", c.RemoteAddr().String(), "err", fipsmode.Explain(err))
		c.Close()
		return
	}
	client := ""
	if peer := c.ConnectionState().PeerCertificates; len(peer) > 0 && len(peer[0].URIs) > 0 {
		client = peer[0].URIs[0].String()
	}
	proxy := s.current.Load().Proxy
	host := proxy.LocalServiceAddress
	if host == "" {
		host = "127.0.0.1"
	}
	app := net.JoinHostPort(host, strconv.Itoa(proxy.LocalServicePort))
	local, err := (&net.Dialer{Timeout: s.timeout}).DialContext(ctx, "tcp", app)
	if err != nil {
		s.log.Warn("sidecar: the local application is unreachable; inbound connection closed", "app", app, "client", client, "err", err)
		c.Close()
		return
	}
	(&gateway.Forwarder{}).Start(c, local, nil, func(st gateway.Stats) {
		s.log.Debug("sidecar: inbound connection closed", "client", client, "app", app, "received", st.ClientToUpstream, "sent", st.UpstreamToClient)
	})
}

// logDecision logs an upstream's mode, deciding layer and path the first
// time, and whenever they change.
func (s *server) logDecision(port int, p resolve.Plan) {
	decision := fmt.Sprintf("%s/%s/%s/%v/%v", p.Mode, p.Layer, p.Route, p.Hops, chainOf(p))
	s.mu.Lock()
	changed := s.logged[port] != decision
	s.logged[port] = decision
	s.mu.Unlock()
	if changed {
		attrs := []any{"upstream", p.Upstream, "datacenter", p.Datacenter, "peer", p.Peer,
			"mode", string(p.Mode), "decided_by", string(p.Layer), "route", string(p.Route), "sni", p.SNI, "hops", fmt.Sprint(p.Hops)}
		if len(p.Failover) > 0 {
			attrs = append(attrs, "chain", strings.Join(chainOf(p), ", "))
		}
		s.log.Info("sidecar: upstream", attrs...)
	}
}

// chainOf names each target of p's chain with its route: "api dc2 local-gateway".
func chainOf(p resolve.Plan) []string {
	var out []string
	for _, t := range p.Chain() {
		out = append(out, t.String()+" "+string(t.Route))
	}
	return out
}
