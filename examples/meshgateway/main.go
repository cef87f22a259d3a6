// Command meshgateway is a Consul mesh gateway without Envoy: it reads the
// SNI of each service-mesh mTLS connection and forwards the still-encrypted
// bytes where Consul's own gateway would. It holds no keys and decrypts
// nothing.
//
//	go run ./examples/meshgateway -service api=127.0.0.1:21000 -remote-gateway dc2=127.0.0.2:8443
//	go run ./examples/meshgateway -demo     # with a built-in TLS backend for "api"
//	go run ./examples/meshgateway -consul   # from the local agent, registering itself
//
// Where things are comes from flags and, optionally, files (-config: a
// topology document and config entries, see package config). It routes
// cluster peering too (package routing): exported and imported services,
// and, when the mesh config entry says PeerThroughMeshGateways, the peering
// control plane; and with -expose-servers (or a topology's wan_federation
// block) WAN federation between Consul's servers.
// Connections it
// cannot route are closed without any dial, one log line each. SIGINT or
// SIGTERM stop accepting and drain open connections for -drain, then close
// them.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/accesslog"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/examples/internal/admin"
	"github.com/meshgate/meshgate/examples/internal/cli"
	"github.com/meshgate/meshgate/examples/internal/drain"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaycert"
	"github.com/meshgate/meshgate/gatewayhealth"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/handover"
	"github.com/meshgate/meshgate/internal/testrig/echo"
	"github.com/meshgate/meshgate/liveconfig"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/proxyconfig"
	"github.com/meshgate/meshgate/registration"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/meshgate/meshgate/sni"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "explain" {
		os.Exit(cli.ExitCode(os.Stderr, "meshgateway", explainCommand(os.Args[2:], os.Stdout, os.Stderr)))
	}
	ctx, hurry := stopSignals()
	os.Exit(cli.ExitCode(os.Stderr, "meshgateway", serve(ctx, hurry, os.Args[1:], os.Stderr, nil)))
}

// addrList is a repeatable NAME=ADDR[,ADDR...] flag.
type addrList map[string][]string

func (a addrList) String() string { return fmt.Sprint(map[string][]string(a)) }

func (a addrList) Set(v string) error {
	name, list, ok := strings.Cut(v, "=")
	if !ok || name == "" || list == "" {
		return fmt.Errorf("want NAME=ADDR[,ADDR...], got %q", v)
	}
	for _, addr := range strings.Split(list, ",") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%q: %v", addr, err)
		}
		a[name] = append(a[name], addr)
	}
	return nil
}

// serviceFlag is -service: NAME=ADDR[,ADDR...] (repeatable), a local
// service's mesh endpoints; or, with -consul, a bare NAME, the name to
// register the gateway as (Consul's "consul connect envoy -service").
type serviceFlag struct {
	addrList
	name string
}

func (s *serviceFlag) Set(v string) error {
	if strings.Contains(v, "=") {
		return s.addrList.Set(v)
	}
	if v == "" || s.name != "" {
		return fmt.Errorf("want NAME=ADDR[,ADDR...], or one NAME to register as with -consul; got %q", v)
	}
	s.name = v
	return nil
}

// run serves until ctx ends. ready, if not nil, receives the listen address.
func run(ctx context.Context, args []string, logOut io.Writer, ready chan<- string) error {
	return serve(ctx, nil, args, logOut, ready)
}

// serve is run; once ctx has ended, a receive from hurry (a second signal)
// cuts the shutdown's grace period or drain short.
func serve(ctx context.Context, hurry <-chan struct{}, args []string, logOut io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("meshgateway", flag.ContinueOnError)
	fs.SetOutput(logOut)
	services, remotes := &serviceFlag{addrList: addrList{}}, addrList{}
	listen := fs.String("listen", "127.0.0.1:8443", "address to accept mesh connections on")
	datacenter := fs.String("datacenter", "dc1", "local datacenter (lower-cased, as Consul does); with -consul, default: the catalog's")
	trustDomain := fs.String("trust-domain", config.DefaultTrustDomain, "trust domain, <cluster-id>.consul")
	fs.Var(services, "service", "a local service's mesh endpoints, NAME=ADDR[,ADDR...] (repeatable); with -consul, a bare NAME: the name to register this gateway as (consul connect envoy -service)")
	fs.Var(remotes, "remote-gateway", "another datacenter's mesh gateways, DC=ADDR[,ADDR...] (repeatable)")
	var configs stringList
	fs.Var(&configs, "config", "a topology or config file or directory (repeatable)")
	peekTimeout := fs.Duration("peek-timeout", sni.DefaultTimeout, "bound on reading a ClientHello")
	connectTimeout := fs.Duration("connect-timeout", gateway.DefaultConnectTimeout, "bound on each upstream dial")
	idleTimeout := fs.Duration("idle-timeout", gateway.DefaultIdleTimeout, "close connections idle both ways this long")
	maxLifetime := fs.Duration("max-connection-lifetime", 0, "close connections open this long, however busy, so that long-lived ones spread again over a fleet after restarts (Envoy's max_downstream_connection_duration); 0, the default, never")
	maxHello := fs.Int("max-hello", sni.DefaultMaxSize, "largest ClientHello accepted, bytes")
	maxConns := fs.Int("max-conns", 0, "most connections open at once; 0 means no bound")
	releaseMemory := fs.Bool("release-memory", true, "return memory to the system after a burst of connections (1,000 or more, then a quiet second)")
	engineName := fs.String("engine", "", "how connections are carried (gateway.Server.Engine): io_uring (a ring per core), epoll (an event loop per core) or goroutines (one per connection); empty: the fastest that works here. io_uring where the kernel refuses it serves with epoll, and the log says why")
	eventLoop := fs.Bool("event-loop", true, "deprecated: -event-loop=false is -engine goroutines")
	drainFor := fs.Duration("drain", 30*time.Second, "how long shutdown waits for open connections once it stopped accepting; those still open then are closed")
	shutdownGrace := fs.Duration("shutdown-grace", 5*time.Second, "with -consul or -admin: on SIGTERM, keep accepting this long after going into maintenance in Consul and answering 503 on /ready, so that sidecars and other gateways stop sending first; 0 stops accepting at once")
	pidFile := fs.String("pid-file", "", "write the process's PID here once it serves (a binary upgrade's new process rewrites it), for systemd's PIDFile= and for kill -USR2")
	probeInterval := fs.Duration("probe-interval", gatewayhealth.DefaultInterval, "probe the gateways of other datacenters and peers this often (a TCP connect; every quarter of it while one does not answer): those that do not answer are left out of routing, critical ones that do are routed; 0 turns probing off")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text (logfmt) or json, for the diagnostic log and the access log")
	accessLog := fs.String("access-log", "", "write one line per connection, forwarded or rejected, to this file (- for standard output); off by default")
	adminAddr := fs.String("admin", "", "serve /metrics, /ready and /debug/pprof/ on this address, such as 127.0.0.1:19000; off by default (keep it off public interfaces)")
	envoyMetrics := fs.Bool("envoy-metrics", false, "with -admin: also serve the metrics a Consul mesh gateway's Envoy reports (envoy_cluster_*, envoy_tcp_*, envoy_server_*, with Consul's labels), for Consul's Grafana dashboards and Envoy-named alerts")
	useConsul := fs.Bool("consul", false, "route from the local Consul agent (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...) and register this gateway with it")
	consulWait := fs.Bool("consul-wait", false, "with -consul: wait for the agent at start instead of failing")
	peering := fs.String("peering", "auto", "with -consul: follow cluster peering (needs peering:read): auto (when the mesh entry sends peering through mesh gateways or the token may read peerings), on, or off")
	domain := fs.String("domain", "", "with -consul and WAN federation: the servers' DNS domain (default: the agent's, which needs agent:read, else consul)")
	serviceName := fs.String("service-name", registration.DefaultName, "the gateway's service name: its service-defaults' UpstreamConfig.Defaults.Limits bound its routes, as Consul's gateway reads them; with -consul, the name to register it as (as -service NAME)")
	register := fs.Bool("register", true, "with -consul: register this gateway with the agent (consul connect envoy -register); the default unless -proxy-id is given alone")
	address := fs.String("address", "", "with -consul: the LAN address to advertise, [host][:port] (consul connect envoy -address); default: the -listen address, or the node's address and -listen's port when -listen is a wildcard; without -listen, the gateway listens here")
	wanAddress := fs.String("wan-address", "", "with -consul: the WAN address to advertise, host:port, where other datacenters and peers dial (default: none, so they dial the LAN address)")
	bindAddrs := addrList{}
	fs.Var(bindAddrs, "bind-address", "with -consul: listen here instead of -listen, NAME=ADDR (repeatable; consul connect envoy -bind-address: Proxy.Config envoy_gateway_bind_addresses)")
	deregisterAfter := fs.Duration("deregister-after-critical", 6*time.Hour, "with -consul: the agent removes the registration after its check has failed this long")
	proxyID := fs.String("proxy-id", "", "with -consul: the service ID, one per instance (default: the service name); alone (without -register), serve as this mesh gateway, already registered with the agent (its address, tagged addresses, meta and Proxy.Config)")
	exposeServers := fs.Bool("expose-servers", false, "with -consul: register as a gateway that carries WAN federation between Consul's servers (the consul-wan-federation meta), and route their names, as consul connect envoy -expose-servers")
	l7Flag := fs.String("l7-exports", "refuse", "an exported service whose protocol is http, http2 or grpc (which Consul's gateway terminates, to apply routers, splitters and L7 intentions): refuse it with reason l7-export, terminate it as Consul's gateway does (needs -consul), or passthrough as TCP without those rules")
	var agentFlags agentFlags
	agentFlags.register(fs)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this file until shutdown")
	demo := fs.Bool("demo", false, `also start a TLS echo server for service "api" and check a connection through the gateway; then start a second datacenter (a meshgate gateway and a Connect-native api) and reach its api from a sidecar in each mesh-gateway mode, this gateway being the local one`)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected arguments %q", fs.Args())
	}
	if *probeInterval < 0 {
		return cli.Usagef("-probe-interval %s: want 0 (off) or more", *probeInterval)
	}
	if *maxLifetime < 0 {
		return cli.Usagef("-max-connection-lifetime %s: want 0 (never) or more", *maxLifetime)
	}
	if *shutdownGrace < 0 {
		return cli.Usagef("-shutdown-grace %s: want 0 or more", *shutdownGrace)
	}
	// Listeners handed over by a previous process (a binary upgrade), and
	// the upgrade to the next one.
	upgrader, err := handover.New(handover.Options{PIDFile: *pidFile})
	if err != nil {
		return err
	}
	defer upgrader.Close()
	ctx = context.WithValue(ctx, handoverKey{}, upgrader)
	*datacenter = strings.ToLower(*datacenter) // as Consul does with its agents' datacenter
	newHandler, level, err := cli.Logging(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	log := slog.New(newHandler(logOut, level))
	var observers []gateway.Observer
	if *accessLog != "" {
		w, closeLog, err := admin.OpenLog(*accessLog)
		if err != nil {
			return err
		}
		defer closeLog()
		observers = append(observers, accesslog.New(slog.New(newHandler(w, slog.LevelInfo))))
	}
	var servingNow atomic.Bool // for envoy_server_live
	var registry *prometheus.Registry
	var metrics gatewayMetrics // made once the view is known
	var router gateway.Switch  // replaced on SIGHUP in file mode
	readiness := &admin.Readiness{}
	readiness.Set("listener", errNotListening)
	readiness.Add("view", metrics.viewReady)
	if *envoyMetrics && *adminAddr == "" {
		return cli.Usagef("-envoy-metrics needs -admin")
	}
	var adminLn net.Listener
	stopAdmin := func() {}
	if *adminAddr != "" {
		registry = admin.Registry()
		refusals := admin.NewRefusals(0)
		observers = append(observers, refusals)
		explain := &admin.Explainer{Router: &router, Ejected: func() map[string]time.Time {
			if s := metrics.server.Load(); s != nil {
				return s.Ejected()
			}
			return nil
		}}
		if adminLn, err = listenTCP(ctx, *adminAddr); err != nil {
			return fmt.Errorf("-admin: %w", err)
		}
		if stopAdmin, err = admin.Serve(*adminAddr, admin.Endpoint{Registry: registry, Ready: readiness, Explain: explain, Refusals: refusals,
			Listener: adminLn}, log, "meshgateway"); err != nil {
			return err
		}
		defer stopAdmin()
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch *peering {
	case "auto", "on", "off":
	default:
		return cli.Usagef("-peering %q: want auto, on or off", *peering)
	}
	for _, f := range append([]string{"proxy-id", "register", "address", "bind-address", "deregister-after-critical", "peering", "domain"}, agentFlags.names()...) {
		if set[f] && !*useConsul {
			return cli.Usagef("-%s needs -consul", f)
		}
	}
	if services.name != "" {
		if !*useConsul || set["service-name"] {
			return cli.Usagef("-service %s: a bare NAME is the name to register the gateway as, with -consul (once: -service-name says the same); else -service takes NAME=ADDR[,ADDR...]", services.name)
		}
		*serviceName = services.name
	}
	if !set["register"] {
		*register = *proxyID == "" // -proxy-id alone attaches, as Consul's command without -register
	}
	attach := *useConsul && !*register
	if *exposeServers && (!*useConsul || attach) {
		return cli.Usagef("-expose-servers needs -consul, and goes with registering: a gateway run with -proxy-id carries WAN federation when its registration has the consul-wan-federation meta")
	}
	if attach && (set["address"] || set["wan-address"] || len(bindAddrs) > 0 || set["deregister-after-critical"]) {
		return cli.Usagef("-address, -wan-address, -bind-address and -deregister-after-critical go with registering (-register)")
	}
	var l7mode l7Handling
	switch *l7Flag {
	case "refuse":
	case "passthrough":
		l7mode.pass = true
	case "terminate":
		if !*useConsul {
			return cli.Usagef("-l7-exports terminate needs -consul: the gateway's certificate comes from the agent")
		}
	default:
		return cli.Usagef("-l7-exports %q: want refuse, terminate or passthrough", *l7Flag)
	}
	var demoCert tls.Certificate
	if *demo {
		var addr string
		var err error
		demoCert, addr, err = startDemoBackend(ctx, sni.ServiceSNI("api", "", "", "", *datacenter, *trustDomain))
		if err != nil {
			return err
		}
		services.addrList["api"] = append(services.addrList["api"], addr)
		log.Info("demo: TLS echo server for service api", "addr", addr)
	}
	var modes *modesDemo
	if *demo && !*useConsul {
		var err error
		if modes, err = startModesDemo(ctx, *datacenter, *trustDomain); err != nil {
			return err
		}
		remotes[modes.remote] = append(remotes[modes.remote], modes.remoteAddr)
		observers = append(observers, modes.localGateway)
		log.Info("demo: a second datacenter, with a meshgate gateway and a Connect-native api", "datacenter", modes.remote,
			"gateway", modes.remoteAddr, "api", modes.apiAddr)
	}

	// The source, the gateway's Proxy.Config options and its listeners.
	var src mesh.Source
	var opts proxyconfig.Gateway
	var listeners []net.Listener
	var binds []string // the addresses listeners were asked for, in order
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}()
	var g *consulGateway // with -consul
	if *useConsul {
		if len(services.addrList) > 0 || len(remotes) > 0 || len(configs) > 0 {
			return errors.New("-consul takes where things are from the agent; drop -service, -remote-gateway and -config")
		}
		cfg := agentFlags.config()
		client, err := api.NewClient(cfg) // reads the token file into cfg.Token
		if err != nil {
			return fmt.Errorf("the Consul agent's client settings: %w", err)
		}
		federate := *exposeServers
		if attach {
			svc, err := waitGatewayService(ctx, client, *proxyID, *consulWait, log)
			if err != nil {
				return err
			}
			*proxyID, federate = svc.ID, registration.ExposesServers(svc)
			*serviceName = svc.Service // the registered gateway's own
		}
		// Its own registration is followed too: one long poll of its own.
		view := consulview.Options{Logger: log, WaitForAgent: *consulWait, WANFederation: federate, Domain: *domain,
			Peering: consulview.PeeringMode(strings.TrimPrefix(*peering, "auto")), Authorizer: consulview.TokenAuthorizer(cfg),
			MaxConnections: consulview.AgentConnections(cfg, 1)}
		if set["datacenter"] {
			view.Datacenter = *datacenter
		}
		cs, err := consulview.New(ctx, client, view)
		if err != nil {
			return err
		}
		defer cs.Close()
		src = cs
		if registry != nil {
			registry.MustRegister(gatewaymetrics.SourceCollector(func() gatewaymetrics.SourceState {
				st := cs.Stats()
				return gatewaymetrics.SourceState{Services: st.Services, LastUpdate: st.LastUpdate, Errors: st.Errors, Failing: st.Failing}
			}))
		}
		bindTo := map[string]string{}
		for name, addrs := range bindAddrs {
			if len(addrs) != 1 {
				return cli.Usagef("-bind-address %s: one address per name", name)
			}
			bindTo[name] = addrs[0]
		}
		g = &consulGateway{client: client, log: log, listen: *listen, listenSet: set["listen"], address: *address,
			reg: registration.Gateway{Name: *serviceName, ID: *proxyID, WANAddress: *wanAddress, BindAddresses: bindTo,
				DeregisterCriticalAfter: *deregisterAfter, ExposeServers: *exposeServers, Logger: log}}
		if attach {
			listeners, binds, opts, err = g.attach(ctx, *proxyID)
		} else {
			listeners, binds, opts, err = g.register(ctx)
			defer g.deregisterIfRegistered()
		}
		if err != nil {
			return err
		}
		if err := clearOwnMaintenance(ctx, client, g.id, log); err != nil {
			log.Warn("meshgateway: could not check for a maintenance a previous run left", "err", err)
		}
		if *l7Flag == "terminate" {
			var observer l7.Observer // its metrics, with -admin
			if registry != nil {
				observer = l7Metrics(registry, *envoyMetrics, *serviceName, cs.View())
			}
			grpcAddr, grpcTLS, err := agentFlags.grpc(cfg)
			if err != nil {
				return err
			}
			warnWithoutMeshWrite(ctx, view.Authorizer, log)
			certOpts := gatewaycert.Options{GRPCAddr: grpcAddr, TLS: grpcTLS, GatewayID: g.id, Token: cfg.Token}
			stopL7, serve, certOK, err := startTerminator(ctx, client, cs, certOpts, opts.MaxRequestHeadersKB, observer, log)
			if err != nil {
				return err
			}
			readiness.Add("certificate", certOK)
			defer stopL7()
			l7mode.serve = serve
		}
	} else {
		s, config, err := buildSource(configs, *datacenter, *trustDomain, services.addrList, remotes)
		if err != nil {
			return err
		}
		src = s
		if opts, err = proxyconfig.ParseGateway(config); err != nil {
			return fmt.Errorf("proxy-defaults Config: %w", err)
		}
		binds = opts.Binds(*listen, nil)
		if listeners, err = listenAll(ctx, binds, nil); err != nil {
			return err
		}
		for _, ln := range listeners {
			if err := refuseSelfRoutes(ctx, ln.Addr(), src.View()); err != nil {
				return err
			}
		}
	}
	if len(opts.Ignored) > 0 {
		log.Info("meshgateway: Proxy.Config options that mean nothing without Envoy are ignored", "options", opts.Ignored)
	}
	if len(opts.Unknown) > 0 {
		log.Warn("meshgateway: Proxy.Config options Consul does not define are ignored", "options", opts.Unknown)
	}
	// Other datacenters' and peers' gateways probed; the routes read this.
	inner := newSwapSource(src)
	routed := mesh.Source(inner)
	if *probeInterval > 0 {
		health := gatewayhealth.New(inner, gatewayhealth.Options{Interval: *probeInterval, Timeout: min(gatewayhealth.DefaultTimeout, *probeInterval), Logger: log})
		defer health.Close()
		routed = health
		if registry != nil {
			registry.MustRegister(gatewaymetrics.RemoteGatewaysCollector(remoteGateways(health)))
		}
	}
	v := src.View()
	metrics.setSource(routed)
	if registry != nil {
		observers = append(observers, metrics.observer(registry, *envoyMetrics, *serviceName, v, *listen, opts, servingNow.Load))
	}
	engine := gateway.Engine(*engineName)
	switch {
	case engine == "" && set["event-loop"] && !*eventLoop:
		engine = gateway.EngineGoroutines
	case engine == "":
		engine = gateway.FastestEngine()
	case engine != gateway.EngineIOUring: // io_uring falls back to epoll by itself
		if err := gateway.CheckEngine(engine); err != nil {
			return fmt.Errorf("-engine: %w", err)
		}
	}
	// The AccessLogs Consul gives the gateway, and the fields it does not
	// apply, named in one warning, both followed while it runs.
	fields := newConsulFields(log, *serviceName, *accessLog != "", l7mode.serve != nil)
	if fields.envoy != nil {
		dc := v.Datacenter
		fields.envoy.Cluster = func(r *gateway.ConnRecord) string { return gatewaymetrics.ConsulCluster(r, dc) }
		observers = append(observers, fields.envoy)
		defer fields.envoy.Close()
	}
	s := &gateway.Server{
		Router:                &router,
		Observer:              gateway.MultiObserver(observers...),
		PeekTimeout:           *peekTimeout,
		MaxHelloSize:          *maxHello,
		ConnectTimeout:        *connectTimeout,
		IdleTimeout:           *idleTimeout,
		MaxConnectionLifetime: *maxLifetime,
		MaxConns:              *maxConns,
		ReleaseMemory:         *releaseMemory,
		Engine:                engine,
		Logger:                log,
	}
	metrics.server.Store(s)
	// The Proxy.Config options in force, applied while the gateway runs.
	lvOpts := liveconfig.Options{Logger: log, Name: "meshgateway", FixedConnectTimeout: set["connect-timeout"], Listen: listenTCP}
	if g != nil {
		lvOpts.Applied = func(opts proxyconfig.Gateway, addrs []string) {
			if err := g.checkFollows(ctx, opts, addrs); err != nil {
				log.Error("meshgateway: moving the health check to the listeners in force", "err", err)
			}
		}
		lvOpts.Registration = func(svc *api.AgentService) {
			if svc.Proxy != nil {
				fields.applyAccessLogs(svc.Proxy.AccessLogs)
			}
		}
	}
	lv := liveconfig.New(s, opts, lvOpts)
	router.Store(lv.Router(gatewayRouter(routed, l7mode, *serviceName)))
	lv.Serve(binds, listeners)
	listeners = nil // Serve closes them
	addrs := lv.Addrs(binds)
	log.Info("meshgateway: serving", "version", cli.Version(), "pid", os.Getpid(), "inherited_listeners", upgrader.Inherited(),
		"listen", strings.Join(addrs, ","), "datacenter", v.Datacenter, "trust_domain", v.TrustDomain,
		"services", len(v.Services), "gateway_locations", len(v.Gateways), "connect_timeout", lv.ConnectTimeout(opts).String(),
		"remote_keepalive", opts.RemoteKeepAlive.Enable, "wan_federation", v.Federation != nil,
		"fips140", fips140.Enabled(), "fips140_enforced", fips140.Enforced(), "engine", string(engine))
	if g != nil {
		go lv.FollowRegistration(ctx, g.client, g.id, g.binds)
		fields.warner.Check(src.View())
		go fields.warner.Watch(ctx, src, time.Second)
	} else {
		fields.applyAccessLogs(proxyDefaultsAccessLogs(v))
		fields.warner.Check(v)
	}
	if *demo {
		go func() {
			demoCheck(log, addrs[0], sni.ServiceSNI("api", "", "", "", v.Datacenter, v.TrustDomain), demoCert)
			if modes != nil {
				modes.run(log, addrs[0])
			}
		}()
	}
	// SIGHUP is taken before anyone is told the gateway is ready, so that
	// one sent at once is not lost.
	hup := make(chan os.Signal, 1)
	if !*useConsul {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	usr2, stopUsr2 := upgradeSignals()
	defer stopUsr2()
	servingNow.Store(true)
	readiness.Set("listener", nil)
	if err := upgrader.Ready(); err != nil {
		log.Warn("meshgateway: telling the previous process or the service manager that this one serves", "err", err)
	}
	if ready != nil {
		ready <- addrs[0]
	}
	var serveErr error
	upgraded := false
wait:
	for {
		select {
		case serveErr = <-lv.Served():
			break wait
		case <-ctx.Done():
			break wait
		case <-hup:
			src = reload(ctx, log, &router, lv, reloadFrom{configs, *datacenter, *trustDomain, services.addrList, remotes, *listen, l7mode, *serviceName,
				func(next mesh.Source) mesh.Source { inner.store(next); return routed }}, src)
			metrics.setSource(routed)
			fields.applyAccessLogs(proxyDefaultsAccessLogs(src.View()))
			fields.warner.Check(src.View())
		case <-usr2:
			log.Info("meshgateway: binary upgrade: starting the new binary with the listening sockets")
			lns := handoverListeners(lv)
			if adminLn != nil {
				lns = append(lns, handover.Listener{Network: "tcp", Address: *adminAddr, Listener: adminLn})
			}
			if err := upgrader.Upgrade(ctx, lns); err != nil {
				log.Error("meshgateway: binary upgrade failed; this process goes on serving", "err", err)
				continue
			}
			log.Info("meshgateway: binary upgrade: the new process serves; this one stops accepting and drains")
			upgraded = true
			break wait
		}
	}
	plan := drain.Plan{Server: s, Drain: *drainFor, Logger: log, Name: "meshgateway"}
	if upgraded {
		// The sockets, the PID file and the registration are the new
		// process's now.
		stopAdmin()
		if g != nil {
			g.handedOver()
		}
	} else {
		plan.Unready = func() { servingNow.Store(false); readiness.Set("drain", errDraining) }
		if g != nil {
			plan.Withdraw = g.withdraw
			if g.registered != nil { // a registration of its own
				plan.Deregister = g.deregisterNow
			}
		}
		if g != nil || adminLn != nil {
			plan.Grace = *shutdownGrace
		}
	}
	plan.Run(hurry)
	lv.Wait()
	if serveErr != nil && !errors.Is(serveErr, gateway.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// l7Handling is what the gateway does with exports whose protocol is http,
// http2 or grpc (-l7-exports): pass them through as TCP, or hand them to
// the terminator's serve; neither means refuse them.
type l7Handling struct {
	pass  bool
	serve func(net.Conn)
}

// gatewayRouter routes as Consul's mesh gateway: Consul servers' names for
// WAN federation (when the view takes part), then cluster peering's names
// (L7 exports as l7mode says), then the mesh's; the routes bound by the
// limits of service's service-defaults.
func gatewayRouter(src mesh.Source, l7mode l7Handling, service string) gateway.Router {
	r := routing.New(src)
	r.SetGatewayService(service)
	r.Peering.PassThroughL7Exports, r.Peering.Terminate = l7mode.pass, l7mode.serve
	return r
}

// startTerminator makes the terminator of the gateway's L7 exports, as
// the registered gateway certOpts.GatewayID, whose certificate the agent at
// certOpts.GRPCAddr gives, with the Proxy.Config's header bound at start
// (0: Envoy's 60 KiB); serve takes a connection in the process.
func startTerminator(ctx context.Context, client *api.Client, src mesh.Source, certOpts gatewaycert.Options, maxHeadersKB int,
	observer l7.Observer, log *slog.Logger) (stop func(), serve func(net.Conn), certOK func() error, err error) {
	certs, err := gatewaycert.Watch(ctx, client, certOpts)
	if err != nil {
		return nil, nil, nil, err
	}
	t := &l7.Terminator{Source: src, Certs: certs, Logger: log, MaxRequestHeadersKB: maxHeadersKB, Observer: observer}
	log.Info("meshgateway: terminating L7 exports", "grpc_addr", certOpts.GRPCAddr, "gateway_id", certOpts.GatewayID, "max_request_headers_kb", maxHeadersKB)
	return func() { t.Close(); certs.Close() }, t.ServeConn, certificateReady(certs), nil
}

// listenAll listens on each of addrs, reusing have for its own address,
// and returns the listeners in the order of addrs; have is closed if addrs
// leave it out. None is left open on error.
func listenAll(ctx context.Context, addrs []string, have net.Listener) ([]net.Listener, error) {
	if len(addrs) == 0 {
		if have != nil {
			have.Close()
		}
		return nil, errors.New("nothing to listen on: envoy_gateway_no_default_bind is set and no other bind address is given")
	}
	var out []net.Listener
	fail := func(err error) ([]net.Listener, error) {
		for _, ln := range out {
			ln.Close()
		}
		if have != nil {
			have.Close()
		}
		return nil, err
	}
	kept := false
	for _, addr := range addrs {
		if have != nil && addr == have.Addr().String() {
			out, kept = append(out, have), true
			continue
		}
		ln, err := listenTCP(ctx, addr)
		if err != nil {
			return fail(fmt.Errorf("listening on %s: %w", addr, err))
		}
		out = append(out, ln)
	}
	if have != nil && !kept {
		have.Close()
	}
	return out, nil
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// buildSource merges the files' topology with the flags. It also returns
// the proxy-defaults entry's Config, which Consul merges into every
// gateway's Proxy.Config.
func buildSource(paths []string, datacenter, trustDomain string, services, remotes addrList) (*config.Static, map[string]any, error) {
	set := &config.Set{}
	if len(paths) > 0 {
		var err error
		if set, err = config.Load(paths...); err != nil {
			return nil, nil, err
		}
	}
	if set.Topology == nil {
		set.Topology = &mesh.View{}
	}
	t := set.Topology
	if t.Datacenter == "" {
		t.Datacenter = datacenter
	}
	if t.TrustDomain == "" {
		t.TrustDomain = trustDomain
	}
	if t.Services == nil {
		t.Services = map[mesh.ServiceKey][]mesh.Endpoint{}
	}
	for name, addrs := range services {
		k := mesh.ServiceKey{Name: name}
		for _, a := range addrs {
			t.Services[k] = append(t.Services[k], mesh.Endpoint{Address: a})
		}
	}
	for dc, addrs := range remotes {
		if strings.EqualFold(dc, t.Datacenter) {
			return nil, nil, fmt.Errorf("-remote-gateway %s: that is the local datacenter", dc)
		}
		if t.Gateways == nil {
			t.Gateways = map[mesh.Location][]mesh.Endpoint{}
		}
		l := mesh.Location{Datacenter: dc}
		for _, a := range addrs {
			t.Gateways[l] = append(t.Gateways[l], mesh.Endpoint{WAN: a})
		}
	}
	var proxyConfig map[string]any
	if set.ProxyDefaults != nil {
		proxyConfig = set.ProxyDefaults.Config
	}
	src, err := config.NewStatic(set, config.StaticOptions{Datacenter: datacenter, TrustDomain: trustDomain})
	return src, proxyConfig, err
}

// startDemoBackend serves TLS for name with a fresh self-signed certificate
// and echoes what it receives, until ctx ends.
func startDemoBackend(ctx context.Context, name string) (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return tls.Certificate{}, "", err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	go echo.Serve(ln, nil)
	return cert, ln.Addr().String(), nil
}

// demoCheck makes one real TLS connection through the gateway and logs it.
func demoCheck(log *slog.Logger, gw, name string, cert tls.Certificate) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	d := tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: pool}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", gw)
	if err != nil {
		log.Error("demo: TLS through the gateway failed", "err", err)
		return
	}
	defer c.Close()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		log.Error("demo: echo through the gateway failed", "err", err)
		return
	}
	log.Info("demo: TLS 1.3 through the gateway verified the backend's certificate and echoed",
		"server_name", name, "reply", string(buf))
	log.Info("demo: try it yourself", "command", fmt.Sprintf("openssl s_client -connect %s -servername %s", gw, name))
}

// proxyDefaultsAccessLogs is the AccessLogs of v's proxy-defaults, nil
// without one: what a gateway from files has (no registration of its own
// to merge under them).
func proxyDefaultsAccessLogs(v *mesh.View) *api.AccessLogsConfig {
	if v.ProxyDefaults == nil {
		return nil
	}
	return v.ProxyDefaults.AccessLogs
}
