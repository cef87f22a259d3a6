package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The Go alternatives a user of this library would otherwise embed or run,
// each at a pinned version from the Go module proxy, built with the
// smallest main or configuration it needs into a cache outside the
// repository (the first run builds them; later runs reuse the binaries).
const (
	tcpproxyModule = "github.com/inetaf/tcpproxy"
	tcpproxyVer    = "v0.0.0-20260515195445-c159a6051109"
	traefikModule  = "github.com/traefik/traefik/v3"
	traefikVer     = "v3.6.12"
	caddyModule    = "github.com/caddyserver/caddy/v2"
	caddyVer       = "v2.11.9"
	caddyL4Module  = "github.com/mholt/caddy-l4"
	caddyL4Ver     = "v0.1.2"
)

// tcpproxyMain is the smallest program that routes one SNI with
// inetaf/tcpproxy: an SNI route to a DialProxy (which copies with
// io.Copy, splicing on Linux, and half-closes).
const tcpproxyMain = `package main

import (
	"flag"
	"log"
	"time"

	"github.com/inetaf/tcpproxy"
)

func main() {
	listen := flag.String("listen", "", "address to listen on")
	name := flag.String("sni", "", "server name to route")
	backend := flag.String("backend", "", "where it goes")
	flag.Parse()
	var p tcpproxy.Proxy
	p.AddSNIRoute(*listen, *name, &tcpproxy.DialProxy{Addr: *backend, DialTimeout: 5 * time.Second})
	log.Fatal(p.Run())
}
`

// traefikMain runs Traefik's own TCP router and TCP proxy, configured as
// its file provider would configure them: a router with rule HostSNI and
// TLS passthrough (routing on the ClientHello's name without terminating
// TLS, as a mesh gateway does) to a load balancer of one server, through
// the default transport with Traefik's defaults. Traefik's full binary
// cannot be built here: some of its dependencies (ACME DNS providers) are
// not served by the module proxy. What is left out is the entry point's
// wrapper (connection tracking, timeouts, PROXY protocol), so Traefik
// itself would do a little more per connection, not less.
const traefikMain = `package main

import (
	"context"
	"flag"
	"log"
	"net"
	"time"

	ptypes "github.com/traefik/paerser/types"
	"github.com/traefik/traefik/v3/pkg/config/dynamic"
	"github.com/traefik/traefik/v3/pkg/config/runtime"
	tcpmiddleware "github.com/traefik/traefik/v3/pkg/server/middleware/tcp"
	tcprouter "github.com/traefik/traefik/v3/pkg/server/router/tcp"
	tcpservice "github.com/traefik/traefik/v3/pkg/server/service/tcp"
	"github.com/traefik/traefik/v3/pkg/tcp"
	traefiktls "github.com/traefik/traefik/v3/pkg/tls"
)

func main() {
	listen := flag.String("listen", "", "address to listen on")
	name := flag.String("sni", "", "server name to route")
	backend := flag.String("backend", "", "where it goes")
	flag.Parse()
	conf := runtime.NewConfig(dynamic.Configuration{TCP: &dynamic.TCPConfiguration{
		Routers: map[string]*dynamic.TCPRouter{"mesh@file": {
			EntryPoints: []string{"mesh"}, Rule: "HostSNI(` + "`" + `" + *name + "` + "`" + `)", Service: "backend@file",
			TLS: &dynamic.RouterTCPTLSConfig{Passthrough: true},
		}},
		Services: map[string]*dynamic.TCPService{"backend@file": {
			LoadBalancer: &dynamic.TCPServersLoadBalancer{Servers: []dynamic.TCPServer{{Address: *backend}}},
		}},
	}})
	dialers := tcp.NewDialerManager(nil)
	dialers.Update(map[string]*dynamic.TCPServersTransport{"default@internal": {
		DialTimeout: ptypes.Duration(30 * time.Second), DialKeepAlive: ptypes.Duration(15 * time.Second),
		TerminationDelay: ptypes.Duration(100 * time.Millisecond),
	}})
	routers := tcprouter.NewManager(conf, tcpservice.NewManager(conf, dialers), tcpmiddleware.NewBuilder(conf.TCPMiddlewares), nil, nil, traefiktls.NewManager(nil))
	router := routers.BuildHandlers(context.Background(), []string{"mesh"})["mesh"]
	if router == nil {
		log.Fatal("traefik built no router for the entry point")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go router.ServeTCP(c.(*net.TCPConn))
	}
}
`

// traefikReplaces are Traefik's own go.mod replacements (forks it depends
// on), which a module that requires it must repeat.
const traefikReplaces = `
replace (
	github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
	github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
	github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595
)
`

// caddyMain is caddy with the layer4 app compiled in.
const caddyMain = `package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/mholt/caddy-l4/layer4"
	_ "github.com/mholt/caddy-l4/modules/l4proxy"
	_ "github.com/mholt/caddy-l4/modules/l4tls"
)

func main() { caddycmd.Main() }
`

// peerCache is where a Go peer's build lives: outside the repository, kept
// from run to run.
func peerCache(name, version string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(base, "meshgate", "peers", name+"@"+version)
	return dir, os.MkdirAll(dir, 0o755)
}

// goCmd runs the go command in dir, returning its output in the error.
func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 1500 {
			out = out[len(out)-1500:]
		}
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// buildProgram builds a program of ours (mainSrc) against the modules
// given as path@version, once.
func buildProgram(name, version, mainSrc, goModExtra string, modules ...string) (string, error) {
	dir, err := peerCache(name, version)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	log := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	log("building %s %s into %s (once)", name, version, dir)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module peerbench.local/"+name+"\n\ngo 1.26\n"+goModExtra), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(mainSrc), 0o644); err != nil {
		return "", err
	}
	if err := goCmd(dir, nil, append([]string{"get"}, modules...)...); err != nil {
		return "", err
	}
	if err := goCmd(dir, nil, "mod", "tidy"); err != nil {
		return "", err
	}
	if err := goCmd(dir, []string{"CGO_ENABLED=0"}, "build", "-trimpath", "-o", bin, "."); err != nil {
		return "", err
	}
	return bin, nil
}

// startFlagsProgram starts one of our small mains (tcpproxy's, Traefik's),
// which take -listen, -sni and -backend.
func startFlagsProgram(label, bin string, buildErr error, dir, backendAddr, name string) (*target, *proc, error) {
	if buildErr != nil {
		return nil, nil, fmt.Errorf("%s: %w", label, buildErr)
	}
	addr := freePort()
	p, err := startProc(label, []string{bin, "-listen", addr, "-sni", name, "-backend", backendAddr}, filepath.Join(dir, label+".log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: label, addr: addr, pids: func() []int { return []int{p.cmd.Process.Pid} }}, p, p.waitListening(addr)
}

func startTCPProxy(dir, backendAddr, name string, _ int) (*target, *proc, error) {
	bin, err := buildProgram("tcpproxy", tcpproxyVer, tcpproxyMain, "", tcpproxyModule+"@"+tcpproxyVer)
	return startFlagsProgram("tcpproxy", bin, err, dir, backendAddr, name)
}

func startTraefik(dir, backendAddr, name string, _ int) (*target, *proc, error) {
	bin, err := buildProgram("traefik", traefikVer, traefikMain, traefikReplaces, traefikModule+"@"+traefikVer)
	return startFlagsProgram("traefik", bin, err, dir, backendAddr, name)
}

func startCaddyL4(dir, backendAddr, name string, _ int) (*target, *proc, error) {
	bin, err := buildProgram("caddy-l4", caddyL4Ver, caddyMain, "", caddyModule+"@"+caddyVer, caddyL4Module+"@"+caddyL4Ver)
	if err != nil {
		if strings.Contains(err.Error(), "403") {
			return nil, nil, fmt.Errorf("caddy-l4: the Go module proxy here does not serve %s (403), so it cannot be built: %w", caddyL4Module, err)
		}
		return nil, nil, fmt.Errorf("caddy-l4: %w", err)
	}
	addr := freePort()
	config := fmt.Sprintf(`{
  "admin": {"disabled": true},
  "logging": {"logs": {"default": {"level": "ERROR"}}},
  "apps": {"layer4": {"servers": {"mesh": {
    "listen": [%q],
    "routes": [{
      "match": [{"tls": {"sni": [%q]}}],
      "handle": [{"handler": "proxy", "upstreams": [{"dial": [%q]}]}]
    }]
  }}}}
}`, addr, name, backendAddr)
	path := filepath.Join(dir, "caddy.json")
	check(os.WriteFile(path, []byte(config), 0o644))
	p, err := startProc("caddy-l4", []string{bin, "run", "--config", path}, filepath.Join(dir, "caddy.log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: "caddy-l4", addr: addr, pids: func() []int { return []int{p.cmd.Process.Pid} }}, p, p.waitListening(addr)
}
