// Command peerbench measures the meshgate gateway against the Go proxies a
// user would otherwise embed or run (inetaf/tcpproxy with an SNI route,
// Traefik's TCP router with HostSNI and TLS passthrough, caddy-l4's tls
// matcher and proxy, each built from the Go module proxy at a pinned
// version; see gopeers.go), nginx (stream, ssl_preread, map on
// $ssl_preread_server_name) and HAProxy (req.ssl_sni, option splice-auto),
// all routing the same long Consul SNI to the same backend on loopback, in
// one run, and prints one table with ratios. meshgate is
// examples/meshgateway as it ships (its default engine: the io_uring
// loops where the kernel allows them, which its log names);
// meshgate-epoll and meshgate-goroutines are the same binary with -engine
// epoll and -engine goroutines. The
// client talking to the backend directly is the ceiling; tools/goepoll,
// the smallest SNI proxy Go allows, is the yardstick for what a Go program
// reaches on the machine, and tools/gouring the same on io_uring.
//
//	bash scripts/peerbench.sh            # installs nginx and haproxy, then runs this
//	go run ./tools/peerbench [-runs 3] [-c 16,1000] [-write 16384] [-idle 9000] [-syscall-conns 2000] [-baseline DIR]
//
// Client, backend and proxies share this machine's cores, as the numbers say.
// It only ever connects to 127.0.0.1. It is not part of the test suite.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	duration := flag.Duration("duration", 5*time.Second, "length of each connection-rate run")
	bulk := flag.Duration("bulk", 3*time.Second, "length of each throughput run")
	idle := flag.Int("idle", 9000, "idle connections for the memory and descriptor measurement")
	idleParallel := flag.Int("idle-parallel", 256, "clients opening the idle connections at once")
	concurrency := flag.String("c", "16,1000", "comma-separated numbers of concurrent clients for the connection-rate runs")
	writeSize := flag.Int("write", 16<<10, "bytes per write(2) for the client and the backend in the throughput runs (a TLS record is at most 16 KiB)")
	runs := flag.Int("runs", 3, "rounds; each round runs every measurement on every target, in an order that rotates from round to round")
	syscallConns := flag.Int("syscall-conns", 2000, "connections to count system calls over with strace -c -f (0: skip)")
	meshgateFlags := flag.String("meshgate-flags", "", "extra flags for the meshgateway binary, such as -cpuprofile=/tmp/cpu.out")
	meshgateEnv := flag.String("meshgate-env", "", "extra environment for the meshgateway binary, such as GOMAXPROCS=1")
	baseline := flag.String("baseline", "", "a checkout of another meshgate version (such as a git worktree of main) to measure beside this one, as target \"baseline\"")
	only := flag.String("only", "", "comma-separated targets to run (direct, meshgate, meshgate-epoll, meshgate-goroutines, baseline, goepoll, gouring, tcpproxy, caddy-l4, traefik, nginx, haproxy); empty means all")
	measure := flag.String("measure", "rate,bulk,idle", "comma-separated measurements to run each round (rate, bulk, idle)")
	helloFile := flag.String("hello", "sni/testdata/hellos/go-crypto-tls.bin", "ClientHello every client sends")
	flag.Parse()
	log.SetFlags(0)
	var levels []int
	for _, f := range strings.Split(*concurrency, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			log.Fatalf("-c: %q is not a number of clients", f)
		}
		levels = append(levels, n)
	}
	if *writeSize < 1 || *runs < 1 {
		log.Fatalf("-write and -runs must be at least 1")
	}

	hello, err := os.ReadFile(*helloFile)
	check(err)
	tuneLoopback()
	raiseNoFile()
	dir, err := os.MkdirTemp("", "peerbench")
	check(err)
	defer os.RemoveAll(dir)

	be := startBackend(*writeSize)
	log.Printf("backend on %s; ClientHello %d bytes from %s; %d-byte writes", be.addr, len(hello), *helloFile, *writeSize)
	name, err := serverName(hello)
	check(err)

	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	extraFlags = strings.Fields(*meshgateFlags)
	extraEnv = strings.Fields(*meshgateEnv)
	want := func(n string) bool { return *only == "" || strings.Contains(","+*only+",", ","+n+",") }
	var targets []*target
	if want("direct") {
		targets = append(targets, &target{name: "direct", addr: be.addr})
	}
	for _, st := range []struct {
		name  string
		start func(string, string, string, int) (*target, *proc, error)
	}{{"meshgate", startMeshgate}, {"meshgate-epoll", startMeshgateEpoll}, {"meshgate-goroutines", startMeshgateGoroutines}, {"baseline", startBaseline(*baseline)}, {"goepoll", startGoepoll}, {"gouring", startGouring},
		{"tcpproxy", startTCPProxy}, {"caddy-l4", startCaddyL4}, {"traefik", startTraefik},
		{"nginx", startNginx}, {"haproxy", startHAProxy}} {
		if st.name == "baseline" && *baseline == "" {
			continue
		}
		if !want(st.name) {
			continue
		}
		start := func() (*target, *proc, error) { return st.start(dir, be.addr, name, *idle) }
		t, p, err := start()
		if err != nil {
			log.Printf("SKIPPED, LOUDLY: %v", err)
			continue
		}
		t.start = start
		procs = append(procs, p)
		targets = append(targets, t)
	}
	for _, t := range targets {
		if err := ping(t.addr, hello); err != nil {
			log.Fatalf("%s does not route the SNI: %v", t.name, err)
		}
	}

	if len(targets) == 0 {
		log.Fatal("nothing to measure")
	}
	res := results{}
	// Once per proxy, on fresh processes before anything else has grown
	// their pools: the idle cost, then (once its connections are gone) the
	// system calls per connection.
	for _, t := range targets {
		if t.pids == nil || !strings.Contains(*measure, "idle") {
			continue // direct: no proxy process to measure
		}
		kb, marginal, fds, held, err := idleCost(t, be, hello, *idle, *idleParallel)
		res.add("idle conns held", t.name, float64(held))
		if err != nil {
			log.Printf("  idle, %s: %d of %d connections held, then: %v", t.name, held, *idle, err)
			continue
		}
		res.add("RSS KiB / idle conn", t.name, kb)
		res.add("  marginal, 2nd half", t.name, marginal)
		res.add("fds / idle conn", t.name, fds)
		log.Printf("  idle, %s: %.2f KiB/conn (marginal %.2f), %.2f fds/conn", t.name, kb, marginal, fds)
	}
	// A proxy that stopped serving in the idle measurement (out of
	// descriptors, say) starts again for the rest, and the report says so.
	for i, t := range targets {
		if t.start == nil || ping(t.addr, hello) == nil {
			continue
		}
		nt, p, err := t.start()
		if err == nil {
			err = ping(nt.addr, hello)
		}
		if err != nil {
			log.Fatalf("%s stopped serving in the idle measurement and does not start again: %v", t.name, err)
		}
		log.Printf("RESTARTED, LOUDLY: %s stopped serving in the idle measurement; a fresh process runs the rest", t.name)
		nt.start = t.start
		procs = append(procs, p)
		targets[i] = nt
	}
	if *syscallConns > 0 {
		for _, t := range targets {
			if t.pids == nil {
				continue
			}
			perConn, top, err := syscallsPerConn(t, hello, *syscallConns)
			if err != nil {
				log.Printf("SKIPPED, LOUDLY: system calls of %s: %v", t.name, err)
				continue
			}
			res.add("syscalls / conn", t.name, perConn)
			log.Printf("  syscalls, %s: %.1f per connection; %s", t.name, perConn, top)
		}
	}
	var metrics []string
	for run := range *runs {
		order := append(targets[run%len(targets):len(targets):len(targets)], targets[:run%len(targets)]...)
		log.Printf("round %d of %d: %s", run+1, *runs, names(order))
		for _, c := range levels {
			if !strings.Contains(*measure, "rate") {
				break
			}
			for _, t := range order {
				r := connRate(t, hello, c, *duration)
				res.add(fmt.Sprintf("conn/s, %d clients", c), t.name, r.perSec)
				res.add(fmt.Sprintf("p50 ms, %d clients", c), t.name, r.p50)
				res.add(fmt.Sprintf("p99 ms, %d clients", c), t.name, r.p99)
				if r.cpuPerConn > 0 {
					res.add(fmt.Sprintf("CPU µs / conn, %d clients", c), t.name, r.cpuPerConn)
					res.add(fmt.Sprintf("user-space CPU µs / conn, %d clients", c), t.name, r.userPerConn)
				}
				log.Printf("  %d clients, %s: %.0f conn/s, p99 %.2f ms, %.1f µs CPU/conn", c, t.name, r.perSec, r.p99, r.cpuPerConn)
			}
		}
		for _, streams := range []int{1, 8} {
			if !strings.Contains(*measure, "bulk") {
				break
			}
			for _, dirn := range []byte{'U', 'D'} {
				metric := fmt.Sprintf("%s MB/s, %d stream", map[byte]string{'U': "upload", 'D': "download"}[dirn], streams)
				if streams > 1 {
					metric += "s"
				}
				for _, t := range order {
					v := throughput(t.addr, hello, dirn, streams, *bulk, *writeSize)
					res.add(metric, t.name, v)
					log.Printf("  %s, %s: %.0f", metric, t.name, v)
				}
			}
		}
	}
	for _, c := range levels {
		metrics = append(metrics, fmt.Sprintf("conn/s, %d clients", c), fmt.Sprintf("p50 ms, %d clients", c),
			fmt.Sprintf("p99 ms, %d clients", c), fmt.Sprintf("CPU µs / conn, %d clients", c), fmt.Sprintf("user-space CPU µs / conn, %d clients", c))
	}
	metrics = append(metrics, "upload MB/s, 1 stream", "download MB/s, 1 stream", "upload MB/s, 8 streams", "download MB/s, 8 streams",
		"idle conns held", "RSS KiB / idle conn", "  marginal, 2nd half", "fds / idle conn", "syscalls / conn")
	report(os.Stdout, targets, res, metrics, *runs, *idle, *writeSize, len(hello), name)
}

// results holds each measurement's value per round: metric → target → values.
type results map[string]map[string][]float64

func (r results) add(metric, target string, v float64) {
	if r[metric] == nil {
		r[metric] = map[string][]float64{}
	}
	r[metric][target] = append(r[metric][target], v)
}

func names(ts []*target) string {
	var out []string
	for _, t := range ts {
		out = append(out, t.name)
	}
	return strings.Join(out, ", ")
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// serverName pulls the SNI out of the ClientHello, for the proxies' configs.
func serverName(h []byte) (string, error) {
	i := bytes.Index(h, []byte(".consul"))
	if i < 0 {
		return "", errors.New("no Consul name in the hello")
	}
	j := i
	for j > 0 && (h[j-1] == '.' || h[j-1] == '-' || h[j-1] >= '0' && h[j-1] <= '9' || h[j-1] >= 'a' && h[j-1] <= 'z') {
		j--
	}
	return string(h[j : i+len(".consul")]), nil
}

func tuneLoopback() {
	for k, v := range map[string]string{"net/ipv4/tcp_tw_reuse": "1", "net/ipv4/ip_local_port_range": "10000 65000"} {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			log.Printf("note: cannot set %s (%v); short connections may run out of ports", k, err)
		}
	}
}

// backend reads the ClientHello record, then one command byte:
// P: reply one byte; U: sink until EOF; D: send until the client closes;
// I: wait for EOF (an idle connection).
type backend struct {
	addr string
	idle atomic.Int64
}

func startBackend(writeSize int) *backend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	b := &backend{addr: ln.Addr().String()}
	chunk := make([]byte, writeSize)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.serve(c, chunk)
		}
	}()
	return b
}

func (b *backend) serve(c net.Conn, chunk []byte) {
	defer c.Close()
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	body := make([]byte, int(binary.BigEndian.Uint16(hdr[3:]))+1)
	if _, err := io.ReadFull(c, body); err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	switch body[len(body)-1] {
	case 'P':
		c.Write([]byte{'p'})
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	case 'U':
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Write([]byte{'k'})
	case 'D':
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	case 'I':
		b.idle.Add(1)
		defer b.idle.Add(-1)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
}

type target struct {
	name string
	addr string
	pids func() []int
	// start starts the target again (a fresh process on a new address).
	start func() (*target, *proc, error)
}

type proc struct {
	cmd  *exec.Cmd
	name string
	log  string
}

func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
	}
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer ln.Close()
	return ln.Addr().String()
}

// waitListening waits for the process to listen on addr; if it does not, the
// error carries the end of its log.
func (p *proc) waitListening(addr string) error {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	out, _ := os.ReadFile(p.log)
	if len(out) > 800 {
		out = out[len(out)-800:]
	}
	return fmt.Errorf("%s: nothing listens on %s; its log ends:\n%s", p.name, addr, out)
}

func startProc(name string, argv []string, logFile string) (*proc, error) {
	return startProcEnv(name, nil, argv, logFile)
}

func startProcEnv(name string, env, argv []string, logFile string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	dieWithParent(cmd)
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &proc{cmd: cmd, name: name, log: logFile}, nil
}

var extraFlags, extraEnv []string

func startMeshgate(dir, backendAddr, name string, idle int) (*target, *proc, error) {
	return startMeshgateFrom(".", "meshgate", dir, backendAddr, name)
}

// startMeshgateEpoll starts the same gateway on its epoll event loops
// (-engine epoll).
func startMeshgateEpoll(dir, backendAddr, name string, idle int) (*target, *proc, error) {
	return startMeshgateFrom(".", "meshgate-epoll", dir, backendAddr, name, "-engine", "epoll")
}

// startMeshgateGoroutines starts the same gateway with a goroutine per
// connection (-engine goroutines).
func startMeshgateGoroutines(dir, backendAddr, name string, idle int) (*target, *proc, error) {
	return startMeshgateFrom(".", "meshgate-goroutines", dir, backendAddr, name, "-engine", "goroutines")
}

// startBaseline starts the meshgateway of another checkout, src.
func startBaseline(src string) func(dir, backendAddr, name string, idle int) (*target, *proc, error) {
	return func(dir, backendAddr, name string, _ int) (*target, *proc, error) {
		return startMeshgateFrom(src, "baseline", dir, backendAddr, name)
	}
}

func startMeshgateFrom(src, label, dir, backendAddr, name string, flags ...string) (*target, *proc, error) {
	bin := filepath.Join(dir, label+"-meshgateway")
	build := exec.Command("go", "build", "-o", bin, "./examples/meshgateway")
	build.Dir = src
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, nil, fmt.Errorf("building meshgateway: %w", err)
	}
	svc := strings.SplitN(name, ".", 2)[0]
	addr := freePort()
	p, err := startProcEnv(label, extraEnv, append([]string{bin, "-listen", addr, "-service", svc + "=" + backendAddr, "-log-level", "error"}, append(flags, extraFlags...)...), filepath.Join(dir, label+".log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: label, addr: addr, pids: func() []int { return []int{p.cmd.Process.Pid} }}, p, p.waitListening(addr)
}

// startGoepoll starts tools/goepoll, the yardstick of what a
// proxy written in Go reaches here on epoll.
func startGoepoll(dir, backendAddr, name string, _ int) (*target, *proc, error) {
	return startYardstick("goepoll", dir, backendAddr, name)
}

// startGouring starts tools/gouring, the same yardstick on io_uring.
func startGouring(dir, backendAddr, name string, _ int) (*target, *proc, error) {
	return startYardstick("gouring", dir, backendAddr, name)
}

func startYardstick(tool, dir, backendAddr, name string) (*target, *proc, error) {
	bin := filepath.Join(dir, tool)
	build := exec.Command("go", "build", "-o", bin, "./tools/"+tool)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, nil, fmt.Errorf("building %s: %w", tool, err)
	}
	addr := freePort()
	p, err := startProc(tool, []string{bin, "-listen", addr, "-route", name + "=" + backendAddr}, filepath.Join(dir, tool+".log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: tool, addr: addr, pids: func() []int { return []int{p.cmd.Process.Pid} }}, p, p.waitListening(addr)
}

func startNginx(dir, backendAddr, name string, idle int) (*target, *proc, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, nil, errors.New("nginx is not installed (scripts/peerbench.sh installs it)")
	}
	addr := freePort()
	conf := fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
worker_rlimit_nofile %[5]d;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log error;
events { worker_connections %[6]d; }
stream {
  map_hash_bucket_size 128;
  map $ssl_preread_server_name $upstream {
    %[2]s %[3]s;
    default 127.0.0.1:1;
  }
  server {
    listen %[4]s backlog=4096;
    ssl_preread on;
    proxy_pass $upstream;
    proxy_timeout 1h;
  }
}
`, dir, name, backendAddr, addr, 2*idle+1000, 2*idle+500)
	path := filepath.Join(dir, "nginx.conf")
	check(os.WriteFile(path, []byte(conf), 0o644))
	p, err := startProc("nginx", []string{bin, "-c", path, "-e", filepath.Join(dir, "nginx-error.log")}, filepath.Join(dir, "nginx.log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: "nginx", addr: addr, pids: func() []int { return withChildren(p.cmd.Process.Pid) }}, p, p.waitListening(addr)
}

func startHAProxy(dir, backendAddr, name string, idle int) (*target, *proc, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, nil, errors.New("haproxy is not installed (scripts/peerbench.sh installs it)")
	}
	addr := freePort()
	conf := fmt.Sprintf(`global
  maxconn %d
  maxpipes 256
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  option splice-auto
frontend mesh
  bind %s
  tcp-request inspect-delay 15s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend api if { req.ssl_sni -i %s }
backend api
  server s1 %s
`, idle+250, addr, name, backendAddr)
	path := filepath.Join(dir, "haproxy.cfg")
	check(os.WriteFile(path, []byte(conf), 0o644))
	p, err := startProc("haproxy", []string{bin, "-f", path}, filepath.Join(dir, "haproxy.log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: "haproxy", addr: addr, pids: func() []int { return withChildren(p.cmd.Process.Pid) }}, p, p.waitListening(addr)
}

// withChildren returns pid and its direct children (nginx's workers).
func withChildren(pid int) []int {
	out := []int{pid}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

func ping(addr string, hello []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(append(append([]byte(nil), hello...), 'P'))
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	return err
}

type rate struct {
	perSec, p50, p99 float64
	// cpuPerConn is the proxy's CPU time (user and system, all threads and
	// processes) per connection in µs; 0 for direct.
	cpuPerConn float64
	// userPerConn is the part of it spent in user space, from the
	// kernel's split of the same time (/proc/PID/stat, clock ticks).
	userPerConn float64
}

// connRate runs workers that each connect, send the ClientHello and a byte,
// wait for the backend's one-byte reply and close, for d.
func connRate(t *target, hello []byte, workers int, d time.Duration) rate {
	addr := t.addr
	var cpu0 time.Duration
	var user0, sys0 int64
	if t.pids != nil {
		cpu0 = cpuTime(t.pids())
		user0, sys0 = cpuTicks(t.pids())
	}
	msg := append(append([]byte(nil), hello...), 'P')
	var mu sync.Mutex
	var lat []time.Duration
	var failures atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			var b [1]byte
			for ctx.Err() == nil {
				t0 := time.Now()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					failures.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, b[:])
				}
				c.Close()
				if err != nil {
					failures.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := failures.Load(); n > 0 {
		log.Printf("  %s: %d failed connections", t.name, n)
	}
	if len(lat) == 0 {
		return rate{}
	}
	var r rate
	if t.pids != nil {
		r.cpuPerConn = float64(cpuTime(t.pids())-cpu0) / 1e3 / float64(len(lat))
		user1, sys1 := cpuTicks(t.pids())
		if ticks := (user1 - user0) + (sys1 - sys0); ticks > 0 {
			r.userPerConn = r.cpuPerConn * float64(user1-user0) / float64(ticks)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e6 }
	r.perSec, r.p50, r.p99 = float64(len(lat))/elapsed.Seconds(), ms(0.50), ms(0.99)
	return r
}

// cpuTicks sums the user and system time of pids, live and exited threads,
// in clock ticks (/proc/PID/stat).
func cpuTicks(pids []int) (user, sys int64) {
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The fields after the command name, which may hold spaces: state
		// is the first; utime and stime are the 12th and 13th.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		user += u
		sys += k
	}
	return user, sys
}

// cpuTime sums the CPU time the kernel charged to every thread of pids
// (/proc/PID/task/TID/schedstat, nanoseconds on the CPU).
func cpuTime(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if fields := strings.Fields(string(b)); len(fields) > 0 {
				ns, _ := strconv.ParseInt(fields[0], 10, 64)
				total += time.Duration(ns)
			}
		}
	}
	return total
}

// syscallsPerConn counts the proxy's system calls over n connections made as
// in connRate by 16 clients, and returns the count per connection and the
// busiest calls. It counts with perf's syscall tracepoints where the kernel
// lets it, and with strace -c -f otherwise. strace stops the process at every
// call, which adds calls of its own to a Go program: stalled threads make the
// runtime's monitor retake processors, with futex and nanosleep calls that
// do not happen at full speed.
func syscallsPerConn(t *target, hello []byte, n int) (float64, string, error) {
	counter, err := countSyscalls(t.pids())
	if err != nil {
		return 0, "", err
	}
	msg := append(append([]byte(nil), hello...), 'P')
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", t.addr, 10*time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Write(msg)
				io.ReadFull(c, b[:])
				c.Close()
			}
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // the last closes reach the proxy
	calls, err := counter()
	if err != nil {
		return 0, "", err
	}
	type row struct {
		name  string
		calls float64
	}
	var rows []row
	var total float64
	for name, c := range calls {
		rows = append(rows, row{name, c})
		total += c
	}
	if total == 0 {
		return 0, "", errors.New("no system calls counted")
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].calls > rows[j].calls })
	var top []string
	for i, r := range rows {
		if i == 14 {
			break
		}
		top = append(top, fmt.Sprintf("%s %.1f", r.name, r.calls/float64(n)))
	}
	return total / float64(n), strings.Join(top, ", "), nil
}

// countSyscalls starts counting the system calls of pids (every thread) with
// perf, or strace if perf cannot; the function it returns stops counting and
// returns the calls by name.
func countSyscalls(pids []int) (stop func() (map[string]float64, error), err error) {
	var ids []string
	for _, pid := range pids {
		ids = append(ids, strconv.Itoa(pid))
	}
	out, err := os.CreateTemp("", "peerbench-syscalls")
	if err != nil {
		return nil, err
	}
	out.Close()
	var argv []string
	var parse func([]byte) map[string]float64
	if bin, err := exec.LookPath("perf"); err == nil && perfTracepoints(bin) {
		argv = []string{bin, "stat", "-x,", "-o", out.Name(), "-e", "syscalls:sys_enter_*", "-p", strings.Join(ids, ",")}
		parse = parsePerfStat
	} else if bin, err := exec.LookPath("strace"); err == nil {
		argv = []string{bin, "-f", "-c", "-o", out.Name()}
		for _, id := range ids {
			argv = append(argv, "-p", id)
		}
		parse = parseStraceSummary
	} else {
		os.Remove(out.Name())
		return nil, errors.New("neither perf (with syscall tracepoints) nor strace is installed (apt-get install strace)")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		os.Remove(out.Name())
		return nil, err
	}
	time.Sleep(time.Second) // it attaches to each thread
	return func() (map[string]float64, error) {
		defer os.Remove(out.Name())
		cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil && !strings.Contains(err.Error(), "interrupt") {
			log.Printf("  %s: %v: %s", filepath.Base(argv[0]), err, stderr.String())
		}
		b, err := os.ReadFile(out.Name())
		if err != nil {
			return nil, err
		}
		calls := parse(b)
		if len(calls) == 0 {
			return nil, fmt.Errorf("%s counted no system calls: %s", filepath.Base(argv[0]), stderr.String())
		}
		return calls, nil
	}, nil
}

// perfTracepoints reports whether perf can count syscall tracepoints here.
func perfTracepoints(perf string) bool {
	return exec.Command(perf, "stat", "-x,", "-e", "syscalls:sys_enter_getpid", "--", "true").Run() == nil
}

// parsePerfStat reads perf stat -x, output: count,unit,event,... per line.
func parsePerfStat(b []byte) map[string]float64 {
	calls := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || !strings.HasPrefix(f[2], "syscalls:sys_enter_") {
			continue
		}
		if c, err := strconv.ParseFloat(f[0], 64); err == nil && c > 0 {
			calls[strings.TrimPrefix(f[2], "syscalls:sys_enter_")] = c
		}
	}
	return calls
}

// parseStraceSummary reads strace -c's table: % time, seconds, usecs/call,
// calls, [errors], syscall.
func parseStraceSummary(b []byte) map[string]float64 {
	calls := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] == "%" || strings.HasPrefix(f[0], "-") || f[len(f)-1] == "total" {
			continue
		}
		if c, err := strconv.ParseFloat(f[3], 64); err == nil {
			calls[f[len(f)-1]] = c
		}
	}
	return calls
}

// throughput moves bytes one way over streams connections for d.
func throughput(addr string, hello []byte, dir byte, streams int, d time.Duration, writeSize int) float64 {
	msg := append(append([]byte(nil), hello...), dir)
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				log.Printf("  dial: %v", err)
				return
			}
			defer c.Close()
			c.Write(msg)
			c.SetDeadline(start.Add(d))
			buf := make([]byte, writeSize)
			if dir == 'D' {
				buf = make([]byte, 256<<10)
			}
			for {
				var n int
				var err error
				if dir == 'U' {
					n, err = c.Write(buf)
				} else {
					n, err = c.Read(buf)
				}
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(total.Load()) / time.Since(start).Seconds() / 1e6
}

// idleCost opens n idle connections through t and returns the proxy's
// resident memory and descriptors per connection over all n, and its memory
// per connection over the second half alone (the marginal cost, without the
// one-off growth of pools and heap that the first connections pay).
// idleCost opens n idle connections through t, parallel at a time, and
// returns the resident memory and descriptors each costs it, and how many
// of them reached the backend (n, unless t failed part way).
func idleCost(t *target, be *backend, hello []byte, n, parallel int) (kbPerConn, marginalKB, fdsPerConn float64, held int, err error) {
	defer waitFewFDs(t)
	time.Sleep(2 * time.Second) // let earlier connections finish closing
	rss0, fd0 := usage(t.pids())
	msg := append(append([]byte(nil), hello...), 'I')
	var mu sync.Mutex
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	base := be.idle.Load()
	open := func(upTo int) error {
		// parallel clients open them at once, as a burst would.
		var wg sync.WaitGroup
		var firstErr error
		todo := make(chan struct{}, upTo)
		for range upTo - len(conns) {
			todo <- struct{}{}
		}
		close(todo)
		for range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range todo {
					c, err := net.Dial("tcp", t.addr)
					if err == nil {
						_, err = c.Write(msg)
					}
					mu.Lock()
					if c != nil {
						conns = append(conns, c)
					}
					if err != nil && firstErr == nil {
						firstErr = fmt.Errorf("after %d connections: %w", len(conns), err)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return firstErr
		}
		deadline := time.Now().Add(60 * time.Second)
		for be.idle.Load()-base < int64(upTo) {
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d connections reached the backend", be.idle.Load()-base, upTo)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(settle)
		return nil
	}
	if err := open(n / 2); err != nil {
		return 0, 0, 0, int(be.idle.Load() - base), err
	}
	rssHalf, _ := usage(t.pids())
	if err := open(n); err != nil {
		return 0, 0, 0, int(be.idle.Load() - base), err
	}
	rss1, fd1 := usage(t.pids())
	return float64(rss1-rss0) / float64(n), float64(rss1-rssHalf) / float64(n-n/2), float64(fd1-fd0) / float64(n), n, nil
}

// settle is how long idle connections sit before their cost is read: long
// enough for meshgate's directions to park (after 1 s) and for its burst
// release to run (a 5 s ticker that releases after a quiet tick: at most
// 10 s after the burst).
const settle = 12 * time.Second

// waitFewFDs waits, for at most 60 s, until the proxy has closed what the
// idle measurement opened, so that the next measurement does not count its
// clean-up.
func waitFewFDs(t *target) {
	for range 600 {
		if _, fds := usage(t.pids()); fds < 200 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// usage sums VmRSS (KiB) and open descriptors over pids.
func usage(pids []int) (rssKB, fds int) {
	for _, pid := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
					kb, _ := strconv.Atoi(strings.Fields(v)[0])
					rssKB += kb
				}
			}
			f.Close()
		}
		entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		fds += len(entries)
	}
	return rssKB, fds
}

// report prints one row per metric: each target's median over the rounds
// with its range, and meshgate's ratio to each peer, the median of the
// rounds' ratios with their range.
func report(w io.Writer, targets []*target, res results, metrics []string, runs, idle, writeSize, helloLen int, name string) {
	fmt.Fprintf(w, "\n%s, %d cores, %s; %d rounds, median [min-max]; %d idle connections; %d-byte writes; %d-byte ClientHello for %s\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), runs, idle, writeSize, helloLen, name)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	header := "| metric\t"
	for _, t := range targets {
		header += " " + t.name + "\t"
	}
	header += " meshgate / best Go alternative\t meshgate / nginx\t meshgate / haproxy\t"
	fmt.Fprintln(tw, header)
	sep := "|---\t"
	for range len(targets) + 3 {
		sep += "---\t"
	}
	fmt.Fprintln(tw, sep)
	for _, m := range metrics {
		if len(res[m]) == 0 {
			continue
		}
		row := "| " + m + "\t"
		for _, t := range targets {
			vs := res[m][t.name]
			if len(vs) == 0 {
				row += " -\t"
				continue
			}
			row += " " + spread(vs, format) + "\t"
		}
		for _, peer := range []string{"best Go", "nginx", "haproxy"} {
			a, b := res[m]["meshgate"], res[m][peer]
			if peer == "best Go" {
				b = bestOf(res[m], goAlternatives, higherIsBetter(m))
			}
			var ratios []float64
			for i := range min(len(a), len(b)) {
				if a[i] != 0 && b[i] != 0 {
					ratios = append(ratios, a[i]/b[i])
				}
			}
			if len(ratios) == 0 {
				row += " -\t"
				continue
			}
			row += " " + spread(ratios, func(v float64) string { return fmt.Sprintf("%.2fx", v) }) + "\t"
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nRatios are meshgate's value over the peer's, round by round: above 1 is better for rates and throughput, below 1 is better for latency, CPU, system calls, memory and descriptors.")
}

// goAlternatives are the Go proxies a user would otherwise embed or run.
var goAlternatives = []string{"tcpproxy", "caddy-l4", "traefik"}

// higherIsBetter says which way a metric is better: rates, throughput and
// connections held up, the rest (latency, CPU, calls, memory) down.
func higherIsBetter(metric string) bool {
	return strings.Contains(metric, "conn/s") || strings.Contains(metric, "MB/s") || strings.Contains(metric, "held")
}

// bestOf returns, round by round, the best value among the targets named
// that were measured in every round.
func bestOf(byTarget map[string][]float64, names []string, higher bool) []float64 {
	var best []float64
	for _, n := range names {
		vs := byTarget[n]
		if len(vs) == 0 {
			continue
		}
		if best == nil {
			best = append([]float64(nil), vs...)
			continue
		}
		for i := range min(len(best), len(vs)) {
			if higher == (vs[i] > best[i]) && vs[i] != best[i] {
				best[i] = vs[i]
			}
		}
	}
	return best
}

// spread formats values as "median [min-max]", or the one value.
func spread(vs []float64, f func(float64) string) string {
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	if len(s) == 1 {
		return f(med)
	}
	return fmt.Sprintf("%s [%s-%s]", f(med), f(s[0]), f(s[len(s)-1]))
}

func format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
