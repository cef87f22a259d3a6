//go:build unix

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gatewayhealth"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// fleetEngine is the engine the fleet's gateways run by default: epoll,
// not the binary's default (io_uring where the kernel allows it), whose
// loops end a few connections in a thousand with EOF under this load
// (an engine bug, open: FLEET_ENGINE=io_uring shows it); what the fleet
// test pins (the shutdown order, the hand-over, the probes) is the same
// on every engine.
const fleetEngine = "epoll"

// fleetEventually bounds every wait of the fleet test; waits poll.
const fleetEventually = 2 * time.Minute

// fleetBinaries builds meshgateway twice, marked v1 and v2 (the version a
// build reports at start), into dir.
func fleetBinaries(t *testing.T, dir string) (v1, v2 string) {
	t.Helper()
	for _, v := range []string{"v1", "v2"} {
		out := filepath.Join(dir, "meshgateway-"+v)
		cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X github.com/meshgate/meshgate/examples/internal/cli.version=fleet-"+v, ".")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building meshgateway %s: %v\n%s", v, err, b)
		}
	}
	return filepath.Join(dir, "meshgateway-v1"), filepath.Join(dir, "meshgateway-v2")
}

// fleetGateway is one meshgateway process (and those that replace it by
// binary upgrades) serving a registration made by the test, with its own
// binary path (so that one can be upgraded alone), PID file, admin address
// and log file.
type fleetGateway struct {
	name, id string
	agent    *consultest.Agent
	addr     string // where it listens (its registration's address)
	admin    string
	dir      string
	bin      string
	pidFile  string
	logPath  string
	args     []string

	mu   sync.Mutex
	pids map[int]bool // every process started for it, to end them all at the end
}

func newFleetGateway(t *testing.T, agent *consultest.Agent, name, v1 string, extra ...string) *fleetGateway {
	t.Helper()
	g := &fleetGateway{name: name, id: "mesh-gateway-" + name, agent: agent, addr: consultest.FreeAddr(t), admin: consultest.FreeAddr(t),
		dir: filepath.Join(t.TempDir(), name), pids: map[int]bool{}}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	g.bin, g.pidFile, g.logPath = filepath.Join(g.dir, "meshgateway"), filepath.Join(g.dir, "gw.pid"), filepath.Join(g.dir, "gw.log")
	install(t, v1, g.bin)
	host, port, _ := net.SplitHostPort(g.addr)
	p, _ := strconv.Atoi(port)
	if err := agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindMeshGateway, ID: g.id, Name: "mesh-gateway", Address: host, Port: p,
		TaggedAddresses: map[string]api.ServiceAddress{"lan": {Address: host, Port: p}, "wan": {Address: host, Port: p}},
		Check:           &api.AgentServiceCheck{Name: "mesh-gateway listening", TCP: g.addr, Interval: "10s", Timeout: "5s", Status: api.HealthPassing},
	}); err != nil {
		t.Fatal(err)
	}
	g.args = append([]string{"-consul", "-proxy-id", g.id, "-admin", g.admin, "-pid-file", g.pidFile,
		"-shutdown-grace", "2s", "-drain", "20s"}, extra...)
	engine := os.Getenv("FLEET_ENGINE")
	if engine == "" {
		engine = fleetEngine
	}
	g.args = append(g.args, "-engine", engine)
	t.Cleanup(g.killAll)
	return g
}

// install puts the binary from at to, by a rename, as an operator installs
// a new build over the old.
func install(t *testing.T, from, to string) {
	t.Helper()
	tmp := to + ".new"
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}

// start starts the gateway's process and waits until it serves.
func (g *fleetGateway) start(t *testing.T) int {
	t.Helper()
	log, err := os.OpenFile(g.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(g.bin, g.args...)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+g.agent.HTTPAddr)
	cmd.Stdout, cmd.Stderr = log, log // files: no copying goroutine outlives the process
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	g.mu.Lock()
	g.pids[cmd.Process.Pid] = true
	g.mu.Unlock()
	g.waitServing(t, cmd.Process.Pid)
	return cmd.Process.Pid
}

// waitServing waits until process pid serves: it wrote the PID file and
// answers /ready.
func (g *fleetGateway) waitServing(t *testing.T, pid int) {
	t.Helper()
	consultest.WaitFor(t, fleetEventually, g.name+" (pid "+strconv.Itoa(pid)+") to serve", func() bool {
		if g.pid() != pid || !alive(pid) {
			return false
		}
		resp, err := http.Get("http://" + g.admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// pid returns the PID the PID file names, or 0.
func (g *fleetGateway) pid() int {
	b, err := os.ReadFile(g.pidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func (g *fleetGateway) signal(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("%s: signal %v to %d: %v", g.name, sig, pid, err)
	}
}

// waitGone waits until process pid has ended.
func (g *fleetGateway) waitGone(t *testing.T, pid int) {
	t.Helper()
	consultest.WaitFor(t, fleetEventually, fmt.Sprintf("%s (pid %d) to end", g.name, pid), func() bool { return !alive(pid) })
}

// alive reports whether process pid runs (a zombie does not).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func (g *fleetGateway) killAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if pid := g.pid(); pid > 0 {
		g.pids[pid] = true
	}
	for pid := range g.pids {
		if alive(pid) && g.runs(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// runs reports whether process pid runs the gateway's binary: a PID
// recorded earlier may belong to any process by now (PIDs wrap around in
// minutes on a busy machine), which must not be killed.
func (g *fleetGateway) runs(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return argv0 == g.bin
}

func (g *fleetGateway) log() string {
	b, _ := os.ReadFile(g.logPath)
	return string(b)
}

// metric sums a metric the gateway serves whose labels include labels.
func (g *fleetGateway) metric(name string, labels map[string]string) (float64, error) {
	resp, err := http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	return counter(families, name, labels), nil
}

// healthy reports whether the catalog lists the gateway as passing, out of
// maintenance.
func (g *fleetGateway) healthy() bool {
	entries, _, err := g.agent.Client.Health().Service("mesh-gateway", "", true, nil)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Service.ID == g.id {
			return true
		}
	}
	return false
}

// fleetLoad dials api in dc2 from web in dc1 through a Go sidecar
// (sidecar.Dialer) in one mode, at a steady rate, each connection sending
// random bytes and checking the echo.
type fleetLoad struct {
	d     *sidecar.Dialer
	mode  api.MeshGatewayMode
	every time.Duration

	inflight atomic.Int64
	mu       sync.Mutex
	ok       int
	failed   []fleetFailure
	served   map[int]int    // connections by chain target (0: dc2, 1: dc3)
	firstHop map[string]int // by the address the sidecar dialled
	last     map[int]time.Time
	first    map[int]time.Time // first connection served by a target since mark
	mark     time.Time
}

type fleetFailure struct {
	at          time.Time
	established bool // the failure came after the connection was made
	err         error
}

func newFleetLoad(d *sidecar.Dialer, mode api.MeshGatewayMode, rate int) *fleetLoad {
	return &fleetLoad{d: d, mode: mode, every: time.Second / time.Duration(rate), served: map[int]int{}, firstHop: map[string]int{},
		last: map[int]time.Time{}, first: map[int]time.Time{}}
}

// run makes a connection every l.every (at most 64 at once) until stop.
func (l *fleetLoad) run(stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	t := time.NewTicker(l.every)
	defer t.Stop()
	slots := make(chan struct{}, 64)
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			continue // 64 at once: the machine is behind; skip a beat
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() { <-slots }()
			l.one()
		}()
	}
}

func (l *fleetLoad) one() {
	l.inflight.Add(1)
	defer l.inflight.Add(-1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, plan, err := l.d.Dial(ctx, api.Upstream{DestinationName: "api", Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: l.mode}})
	if err != nil {
		l.fail(false, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := make([]byte, 512)
	rand.Read(msg)
	back := make([]byte, len(msg))
	if _, err := c.Write(msg); err != nil {
		l.fail(true, err)
		return
	}
	if _, err := io.ReadFull(c, back); err != nil {
		l.fail(true, err)
		return
	}
	if !bytes.Equal(msg, back) {
		l.fail(true, errors.New("the echo differs"))
		return
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ok++
	l.served[plan.Served]++
	l.firstHop[c.NetConn().RemoteAddr().String()]++
	l.last[plan.Served] = now
	if _, ok := l.first[plan.Served]; !ok && !l.mark.IsZero() {
		l.first[plan.Served] = now
	}
}

func (l *fleetLoad) fail(established bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed = append(l.failed, fleetFailure{time.Now(), established, err})
}

// counts is a snapshot of a load's counters.
type counts struct {
	ok, failed, failedEstablished int
	served                        map[int]int
	firstHop                      map[string]int
	errs                          []string
}

func (l *fleetLoad) snapshot() counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := counts{ok: l.ok, failed: len(l.failed), served: map[int]int{}, firstHop: map[string]int{}}
	for k, v := range l.served {
		c.served[k] = v
	}
	for k, v := range l.firstHop {
		c.firstHop[k] = v
	}
	for _, f := range l.failed {
		if f.established {
			c.failedEstablished++
		}
		if len(c.errs) < 5 {
			c.errs = append(c.errs, f.err.Error())
		}
	}
	return c
}

// since returns the counts made since before.
func (c counts) since(before counts) counts {
	out := counts{ok: c.ok - before.ok, failed: c.failed - before.failed, failedEstablished: c.failedEstablished - before.failedEstablished,
		served: map[int]int{}, firstHop: map[string]int{}}
	for k, v := range c.served {
		out.served[k] = v - before.served[k]
	}
	for k, v := range c.firstHop {
		out.firstHop[k] = v - before.firstHop[k]
	}
	if c.failed > before.failed {
		out.errs = c.errs
	}
	return out
}

// markNow starts counting first connections by target from now.
func (l *fleetLoad) markNow() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mark = time.Now()
	clear(l.first)
	return l.mark
}

// firstServed returns when the first connection since the mark was served
// by target, or zero.
func (l *fleetLoad) firstServed(target int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first[target]
}

// A fleet: three meshgate gateways in dc1, two in dc2 and one in dc3
// (WAN-joined agents, real processes of the built binary), a Go sidecar in
// dc1 dialling api in dc2 in local and in remote mode at a steady rate,
// every connection echoing random bytes. The scenarios of issue 38, in
// turn, each with its counts and times logged ("fleet:" lines):
//  1. each dc1 gateway restarted in turn (SIGTERM, started again): 0 failed;
//  2. one dc1 gateway upgraded by SIGUSR2 to another build: 0 failed, 0 cut
//     by the old process;
//  3. one dc2 gateway killed (SIGKILL): only connections open through it
//     may fail; the time until every view leaves it out, and until a
//     restart is routed again (before its catalog check passes);
//  4. both dc2 gateways stopped, api failing over to dc3: the time until
//     new connections reach dc3, 0 failed, and until they come back to dc2;
//  5. the spread of connections over dc1's and dc2's gateways (each
//     carries some).
//
// And two of bad input: an upgrade to a binary that exits at once leaves
// the old process serving; -shutdown-grace 0 stops accepting at once.
//
// The gateways run fleetEngine; FLEET_ENGINE=io_uring (or goroutines)
// runs them all on another.
func TestFleet(t *testing.T) {
	begun := time.Now()
	v1, v2 := fleetBinaries(t, t.TempDir())
	t.Logf("fleet: binaries built in %v", time.Since(begun).Round(time.Millisecond))

	dc1 := consultest.Start(t, consultest.Options{Datacenter: "dc1"})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	dc3 := consultest.Start(t, consultest.Options{Datacenter: "dc3", PrimaryDatacenter: "dc1", JoinWAN: dc1})
	for _, dc := range []string{"dc2", "dc3"} {
		consultest.WaitFor(t, fleetEventually, "dc1 to reach "+dc, func() bool {
			_, _, err := dc1.Client.Catalog().Nodes(&api.QueryOptions{Datacenter: dc})
			return err == nil
		})
	}
	api2 := sidecartest.StartNative(t, dc2.Client, "api", sidecartest.WatchCerts(t, dc2.Client, "api"))
	api3 := sidecartest.StartNative(t, dc3.Client, "api", sidecartest.WatchCerts(t, dc3.Client, "api"))
	if _, _, err := dc1.Client.ConfigEntries().Set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc3"}}}}, nil); err != nil {
		t.Fatal(err)
	}

	gws1 := []*fleetGateway{newFleetGateway(t, dc1, "dc1-a", v1), newFleetGateway(t, dc1, "dc1-b", v1), newFleetGateway(t, dc1, "dc1-c", v1)}
	gws2 := []*fleetGateway{newFleetGateway(t, dc2, "dc2-a", v1), newFleetGateway(t, dc2, "dc2-b", v1)}
	gw3 := newFleetGateway(t, dc3, "dc3-a", v1)
	all := append(append(slices.Clone(gws1), gws2...), gw3)
	var startWG sync.WaitGroup
	for _, g := range all {
		startWG.Add(1)
		go func() { defer startWG.Done(); g.start(t) }()
	}
	startWG.Wait()
	defer func() {
		if t.Failed() {
			for _, g := range all {
				t.Logf("== %s's log (end)\n%s", g.name, tail(g.log(), 3000))
			}
		}
	}()

	// The sidecar: web in dc1, its view probing other datacenters'
	// gateways, as the sidecar binary runs it.
	cs, err := consulview.New(context.Background(), dc1.Client, consulview.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Close)
	view := gatewayhealth.New(cs, gatewayhealth.Options{})
	t.Cleanup(func() { view.Close() })
	d := &sidecar.Dialer{Source: view, Certs: sidecartest.WatchCerts(t, dc1.Client, "web"),
		Instance: mesh.Instance{Service: "web", Name: "web", Proxy: &api.AgentServiceConnectProxyConfig{}}}
	loads := map[api.MeshGatewayMode]*fleetLoad{
		api.MeshGatewayModeLocal:  newFleetLoad(d, api.MeshGatewayModeLocal, 100),
		api.MeshGatewayModeRemote: newFleetLoad(d, api.MeshGatewayModeRemote, 100),
	}
	modes := []api.MeshGatewayMode{api.MeshGatewayModeLocal, api.MeshGatewayModeRemote}
	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	for _, l := range loads {
		loadWG.Add(1)
		go l.run(stopLoad, &loadWG)
	}
	defer func() { close(stopLoad); loadWG.Wait() }()
	snap := func() map[api.MeshGatewayMode]counts {
		out := map[api.MeshGatewayMode]counts{}
		for m, l := range loads {
			out[m] = l.snapshot()
		}
		return out
	}
	// Every gateway known everywhere, and both modes reaching dc2.
	consultest.WaitFor(t, fleetEventually, "both modes to reach api in dc2 through every gateway", func() bool {
		v := view.View()
		if len(v.GatewaysIn(mesh.Location{Datacenter: "dc1"})) != 3 || len(v.GatewaysIn(mesh.Location{Datacenter: "dc2"})) != 2 {
			return false
		}
		for _, l := range loads {
			if l.snapshot().served[0] < 100 {
				return false
			}
		}
		return true
	})
	t.Logf("fleet: %v to set up; api in dc2 answered %d, in dc3 %d", time.Since(begun).Round(time.Millisecond), api2.Accepted(), api3.Accepted())
	report := func(scenario string, before map[api.MeshGatewayMode]counts) map[api.MeshGatewayMode]counts {
		now := snap()
		for _, m := range modes {
			c := now[m].since(before[m])
			t.Logf("fleet: %s: %s mode: %d connections echoed, %d failed (%d after they were made), by target %v; errors %v",
				scenario, m, c.ok, c.failed, c.failedEstablished, c.served, c.errs)
		}
		return now
	}

	// 1. Rolling restart of dc1's gateways.
	before := snap()
	started := time.Now()
	for _, g := range gws1 {
		pid := g.pid()
		at := time.Now()
		g.signal(t, pid, syscall.SIGTERM)
		g.waitGone(t, pid)
		stopped := time.Since(at)
		g.start(t)
		consultest.WaitFor(t, fleetEventually, g.name+" back in the sidecar's view", func() bool {
			for _, e := range view.View().GatewaysIn(mesh.Location{Datacenter: "dc1"}) {
				if e.Address == g.addr {
					return g.healthy()
				}
			}
			return false
		})
		t.Logf("fleet: 1: %s stopped %v after SIGTERM, back in the views %v after", g.name, stopped.Round(time.Millisecond), time.Since(at).Round(time.Millisecond))
	}
	after := report(fmt.Sprintf("1 (rolling restart of dc1's 3 gateways, %v)", time.Since(started).Round(time.Millisecond)), before)
	for _, m := range modes {
		if c := after[m].since(before[m]); c.failed > 0 {
			t.Errorf("1: %s mode: %d connections failed during the rolling restart: %v", m, c.failed, c.errs)
		}
	}

	// 2. Binary upgrade of one dc1 gateway to another build.
	before = snap()
	g := gws1[2]
	old := g.pid()
	install(t, v2, g.bin)
	at := time.Now()
	g.signal(t, old, syscall.SIGUSR2)
	consultest.WaitFor(t, fleetEventually, "the new build to serve", func() bool { return g.pid() != old && g.pid() != 0 })
	newPID := g.pid()
	g.mu.Lock()
	g.pids[newPID] = true
	g.mu.Unlock()
	g.waitServing(t, newPID)
	ready := time.Since(at)
	g.waitGone(t, old)
	logs := g.log()
	if !strings.Contains(logs, fmt.Sprintf(`version=fleet-v2 pid=%d inherited_listeners=true`, newPID)) {
		t.Errorf("2: the new process's start line does not say fleet-v2 with inherited listeners:\n%s", tail(logs, 3000))
	}
	oldCut := cutBy(logs)
	if oldCut != 0 {
		t.Errorf("2: the old process cut %d connections", oldCut)
	}
	after = report(fmt.Sprintf("2 (binary upgrade of %s: the new process ready %v after SIGUSR2, the old one gone %v after, %d connections cut by it)",
		g.name, ready.Round(time.Millisecond), time.Since(at).Round(time.Millisecond), oldCut), before)
	for _, m := range modes {
		if c := after[m].since(before[m]); c.failed > 0 {
			t.Errorf("2: %s mode: %d connections failed during the upgrade: %v", m, c.failed, c.errs)
		}
	}

	// Bad input: an upgrade to a binary that exits at once.
	g = gws1[0]
	pid := g.pid()
	if err := os.WriteFile(g.bin+".new", []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(g.bin+".new", g.bin); err != nil {
		t.Fatal(err)
	}
	g.signal(t, pid, syscall.SIGUSR2)
	consultest.WaitFor(t, fleetEventually, "the failed upgrade to be logged", func() bool {
		return strings.Contains(g.log(), "binary upgrade failed; this process goes on serving")
	})
	if g.pid() != pid || !alive(pid) {
		t.Errorf("a failed upgrade changed the PID file to %d or ended the old process %d", g.pid(), pid)
	}
	g.waitServing(t, pid)
	install(t, v1, g.bin)
	t.Logf("fleet: bad input: an upgrade to a binary that exits at once: %q; the old process serves on", lastLine(g.log(), "binary upgrade failed"))

	// 3. One dc2 gateway killed. Besides the load's short connections, 10
	// long ones per mode are open at the kill: in remote mode exactly
	// those the sidecar made through the killed gateway must fail.
	g = gws2[0]
	long := map[api.MeshGatewayMode][]net.Conn{}
	for _, m := range modes {
		for range 10 {
			c, _, err := d.Dial(context.Background(), api.Upstream{DestinationName: "api", Datacenter: "dc2", MeshGateway: api.MeshGatewayConfig{Mode: m}})
			if err != nil {
				t.Fatalf("3: a long connection in %s mode: %v", m, err)
			}
			t.Cleanup(func() { c.Close() })
			if err := echoOnce(c); err != nil {
				t.Fatalf("3: a long connection in %s mode: %v", m, err)
			}
			long[m] = append(long[m], c)
		}
	}
	before = snap()
	inflight := loads[api.MeshGatewayModeLocal].inflight.Load() + loads[api.MeshGatewayModeRemote].inflight.Load()
	pid = g.pid()
	at = time.Now()
	g.signal(t, pid, syscall.SIGKILL)
	outIn := map[string]time.Duration{}
	consultest.WaitFor(t, fleetEventually, "every view to leave the killed gateway out", func() bool {
		if _, ok := outIn["sidecar"]; !ok && !hasGateway(view.View(), "dc2", g.addr) {
			outIn["sidecar"] = time.Since(at)
		}
		for _, g1 := range gws1 {
			if _, ok := outIn[g1.name]; ok {
				continue
			}
			if up, err := g1.metric("meshgate_remote_gateway_up", map[string]string{"address": g.addr}); err == nil && up == 0 {
				outIn[g1.name] = time.Since(at)
			}
		}
		return len(outIn) == 1+len(gws1)
	})
	longFailed := map[api.MeshGatewayMode]int{}
	throughKilled := 0
	for _, m := range modes {
		for _, c := range long[m] {
			if echoOnce(c) != nil {
				longFailed[m]++
			}
			if m == api.MeshGatewayModeRemote && c.(interface{ NetConn() net.Conn }).NetConn().RemoteAddr().String() == g.addr {
				throughKilled++
			}
		}
	}
	if longFailed[api.MeshGatewayModeRemote] != throughKilled {
		t.Errorf("3: remote mode: %d of the long connections failed; %d went through the killed gateway", longFailed[api.MeshGatewayModeRemote], throughKilled)
	}
	t.Logf("fleet: 3: long connections open at the kill that failed: remote mode %d of 10 (%d went through %s), local mode %d of 10 (through dc1's gateways, to either dc2 gateway)",
		longFailed[api.MeshGatewayModeRemote], throughKilled, g.name, longFailed[api.MeshGatewayModeLocal])
	for _, m := range modes {
		for _, c := range long[m] {
			c.Close()
		}
	}
	time.Sleep(time.Second) // connections keep coming meanwhile
	after = report(fmt.Sprintf("3 (%s killed; left out of the views after %v; %d short connections were being made at the kill)", g.name, outIn, inflight), before)
	for _, m := range modes {
		c := after[m].since(before[m])
		if c.failed-c.failedEstablished > 0 {
			t.Errorf("3: %s mode: %d new connections failed after the kill: %v", m, c.failed-c.failedEstablished, c.errs)
		}
	}
	failedOpen := after[api.MeshGatewayModeLocal].since(before[api.MeshGatewayModeLocal]).failedEstablished +
		after[api.MeshGatewayModeRemote].since(before[api.MeshGatewayModeRemote]).failedEstablished
	if int64(failedOpen) > inflight+64 { // those open then, and those that were being made
		t.Errorf("3: %d established connections failed; %d were open at the kill", failedOpen, inflight)
	}
	// Started again: routed as soon as it answers, though the catalog's
	// check of it may stay critical for up to its 10 s interval.
	at = time.Now()
	g.start(t)
	backIn := map[string]time.Duration{}
	consultest.WaitFor(t, fleetEventually, "every view to route the restarted gateway", func() bool {
		if _, ok := backIn["sidecar"]; !ok && hasGateway(view.View(), "dc2", g.addr) {
			backIn["sidecar"] = time.Since(at)
		}
		for _, g1 := range gws1 {
			if _, ok := backIn[g1.name]; ok {
				continue
			}
			if up, err := g1.metric("meshgate_remote_gateway_up", map[string]string{"address": g.addr}); err == nil && up == 1 {
				backIn[g1.name] = time.Since(at)
			}
		}
		return len(backIn) == 1+len(gws1)
	})
	t.Logf("fleet: 3: %s started again; routed %v after its start (the catalog says passing: %v)", g.name, backIn, g.healthy())

	// 4. Every dc2 gateway stopped: api fails over to dc3, and comes back.
	before = snap()
	for _, l := range loads {
		l.markNow()
	}
	at = time.Now()
	pids := map[*fleetGateway]int{}
	for _, g := range gws2 {
		pids[g] = g.pid()
		g.signal(t, pids[g], syscall.SIGTERM)
	}
	toDC3 := map[api.MeshGatewayMode]time.Duration{}
	consultest.WaitFor(t, fleetEventually, "both modes to reach dc3", func() bool {
		for _, m := range modes {
			if first := loads[m].firstServed(1); !first.IsZero() {
				toDC3[m] = first.Sub(at)
			}
		}
		return len(toDC3) == len(modes)
	})
	for _, g := range gws2 {
		g.waitGone(t, pids[g])
	}
	time.Sleep(time.Second)
	after = report(fmt.Sprintf("4 (dc2's gateways stopped: new connections reached dc3 after %v)", toDC3), before)
	for _, m := range modes {
		if c := after[m].since(before[m]); c.failed > 0 {
			t.Errorf("4: %s mode: %d connections failed while dc2's gateways stopped: %v", m, c.failed, c.errs)
		}
	}
	before = snap()
	for _, l := range loads {
		l.markNow()
	}
	at = time.Now()
	for _, g := range gws2 {
		startWG.Add(1)
		go func() { defer startWG.Done(); g.start(t) }()
	}
	startWG.Wait()
	backDC2 := map[api.MeshGatewayMode]time.Duration{}
	consultest.WaitFor(t, fleetEventually, "both modes to come back to dc2", func() bool {
		for _, m := range modes {
			if first := loads[m].firstServed(0); !first.IsZero() {
				backDC2[m] = first.Sub(at)
			}
		}
		return len(backDC2) == len(modes)
	})
	after = report(fmt.Sprintf("4 (dc2's gateways started again: connections back in dc2 after %v)", backDC2), before)
	for _, m := range modes {
		if c := after[m].since(before[m]); c.failed > 0 {
			t.Errorf("4: %s mode: %d connections failed while dc2's gateways came back: %v", m, c.failed, c.errs)
		}
	}

	// 5. The spread, over a quiet window, from the gateways' own counts.
	consultest.WaitFor(t, fleetEventually, "every dc2 gateway in every view", func() bool {
		for _, g := range gws2 {
			if !hasGateway(view.View(), "dc2", g.addr) {
				return false
			}
			for _, g1 := range gws1 {
				if up, err := g1.metric("meshgate_remote_gateway_up", map[string]string{"address": g.addr}); err != nil || up != 1 {
					return false
				}
			}
		}
		return true
	})
	forwarded := func(gs []*fleetGateway) map[string]float64 {
		out := map[string]float64{}
		for _, g := range gs {
			n, err := g.metric("meshgate_connections_forwarded_total", nil)
			if err != nil {
				t.Fatal(err)
			}
			out[g.name] = n
		}
		return out
	}
	before = snap()
	f1, f2 := forwarded(gws1), forwarded(gws2)
	time.Sleep(5 * time.Second)
	g1after, g2after := forwarded(gws1), forwarded(gws2)
	after = report("5 (5 s of steady load)", before)
	spread := func(a, b map[string]float64) string {
		var parts []string
		for k := range b {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, b[k]-a[k]))
		}
		sort.Strings(parts)
		return strings.Join(parts, ", ")
	}
	t.Logf("fleet: 5: forwarded by dc1's gateways (local mode's first hop): %s", spread(f1, g1after))
	t.Logf("fleet: 5: forwarded by dc2's gateways (both modes): %s", spread(f2, g2after))
	for _, m := range modes {
		t.Logf("fleet: 5: %s mode: the sidecar's first hop: %v", m, after[m].since(before[m]).firstHop)
	}
	// dc1's spread is the sidecar.Dialer's among a target's addresses,
	// dc2's the gateways' own round robin.
	for name, n := range g1after {
		if n-f1[name] == 0 {
			t.Errorf("5: %s carried no connection of local mode in 5 s", name)
		}
	}
	for name, n := range g2after {
		if n-f2[name] == 0 {
			t.Errorf("5: %s carried no connection in 5 s", name)
		}
	}
	t.Logf("fleet: %v in all", time.Since(begun).Round(time.Millisecond))
}

// A gateway run with -shutdown-grace 0 stops accepting as soon as it is
// told to stop, as before the grace period existed.
func TestFleetNoGrace(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "meshgateway")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building: %v\n%s", err, b)
	}
	web, _ := echoBackend(t)
	addr, admin := consultest.FreeAddr(t), consultest.FreeAddr(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-listen", addr, "-admin", admin, "-service", "web="+web, "-shutdown-grace", "0")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	consultest.WaitFor(t, fleetEventually, "the gateway to serve", func() bool {
		code, _ := getStatus("http://" + admin + "/ready")
		return code == http.StatusOK
	})
	held, err := net.Dial("tcp", addr) // an open connection holds the drain
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	consultest.WaitFor(t, fleetEventually, "the listener to close", func() bool { return !listens(addr) })
	held.Close()
	select {
	case <-done:
	case <-time.After(fleetEventually):
		t.Fatal("the gateway did not end")
	}
	out := logs.String()
	if !strings.Contains(out, "grace=0s") || strings.Contains(out, "still accepting for the grace period") {
		t.Errorf("the log does not show a shutdown without grace:\n%s", out)
	}
}

// echoOnce sends random bytes on c and checks that they come back.
func echoOnce(c net.Conn) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	msg := make([]byte, 64)
	rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(c, back); err != nil {
		return err
	}
	if !bytes.Equal(msg, back) {
		return errors.New("the echo differs")
	}
	return nil
}

// hasGateway reports whether v routes a gateway at addr in dc.
func hasGateway(v *mesh.View, dc, addr string) bool {
	for _, e := range v.GatewaysIn(mesh.Location{Datacenter: dc}) {
		if e.BestAddress(true) == addr {
			return true
		}
	}
	return false
}

// cutBy returns how many connections the last drain in logs cut (its
// "drained" line says cut=0; the bound's or a second signal's, cut=N), or
// -1 when there is none.
func cutBy(logs string) int {
	cut := -1
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "meshgateway: drained") && !strings.Contains(line, "closed the open connections") {
			continue
		}
		if i := strings.Index(line, "cut="); i >= 0 {
			if f := strings.Fields(line[i+len("cut="):]); len(f) > 0 {
				cut, _ = strconv.Atoi(f[0])
			}
		}
	}
	return cut
}

func lastLine(logs, substr string) string {
	lines := strings.Split(logs, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
