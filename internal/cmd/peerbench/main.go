// Command peerbench measures the meshgate gateway against nginx (stream,
// ssl_preread, map on $ssl_preread_server_name) and HAProxy (req.ssl_sni,
// option splice-auto), all routing the same long Consul SNI to the same
// backend on loopback, in one run, and prints one table with ratios. The
// client talking to the backend directly is the ceiling.
//
//	bash scripts/peerbench.sh            # installs nginx and haproxy, then runs this
//	go run ./internal/cmd/peerbench [-duration 5s] [-bulk 3s] [-idle 5000]
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
	idle := flag.Int("idle", 5000, "idle connections for the memory and descriptor measurement")
	concurrency := flag.Int("c", 16, "concurrent clients for the connection-rate run")
	meshgateFlags := flag.String("meshgate-flags", "", "extra flags for the meshgateway binary, such as -cpuprofile=/tmp/cpu.out")
	meshgateEnv := flag.String("meshgate-env", "", "extra environment for the meshgateway binary, such as GOMAXPROCS=1")
	only := flag.String("only", "", "comma-separated targets to run (direct, meshgate, nginx, haproxy); empty means all")
	helloFile := flag.String("hello", "sni/testdata/hellos/go-crypto-tls.bin", "ClientHello every client sends")
	flag.Parse()
	log.SetFlags(0)

	hello, err := os.ReadFile(*helloFile)
	check(err)
	tuneLoopback()
	raiseNoFile()
	dir, err := os.MkdirTemp("", "peerbench")
	check(err)
	defer os.RemoveAll(dir)

	be := startBackend()
	log.Printf("backend on %s; ClientHello %d bytes from %s", be.addr, len(hello), *helloFile)
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
		start func(string, string, string) (*target, *proc, error)
	}{{"meshgate", startMeshgate}, {"nginx", startNginx}, {"haproxy", startHAProxy}} {
		if !want(st.name) {
			continue
		}
		t, p, err := st.start(dir, be.addr, name)
		if err != nil {
			log.Printf("SKIPPED, LOUDLY: %v", err)
			continue
		}
		procs = append(procs, p)
		targets = append(targets, t)
	}
	for _, t := range targets {
		if err := ping(t.addr, hello); err != nil {
			log.Fatalf("%s does not route the SNI: %v", t.name, err)
		}
	}

	res := map[string]map[string]float64{}
	set := func(metric, target string, v float64) {
		if res[metric] == nil {
			res[metric] = map[string]float64{}
		}
		res[metric][target] = v
	}
	for _, t := range targets {
		log.Printf("connection rate: %s", t.name)
		rate, p50, p99 := connRate(t.addr, hello, *concurrency, *duration)
		set("conn/s", t.name, rate)
		set("p50 ms", t.name, p50)
		set("p99 ms", t.name, p99)
	}
	for _, streams := range []int{1, 8} {
		for _, dirn := range []byte{'U', 'D'} {
			metric := fmt.Sprintf("%s MB/s, %d stream", map[byte]string{'U': "upload", 'D': "download"}[dirn], streams)
			if streams > 1 {
				metric += "s"
			}
			for _, t := range targets {
				log.Printf("%s: %s", metric, t.name)
				set(metric, t.name, throughput(t.addr, hello, dirn, streams, *bulk))
			}
		}
	}
	for _, t := range targets {
		if t.pids == nil {
			continue // direct: no proxy process to measure
		}
		log.Printf("idle connections: %s", t.name)
		kb, marginal, fds, err := idleCost(t, be, hello, *idle)
		if err != nil {
			log.Printf("  %s: %v", t.name, err)
			continue
		}
		set("RSS KiB / idle conn", t.name, kb)
		set("  marginal, 2nd half", t.name, marginal)
		set("fds / idle conn", t.name, fds)
	}
	report(os.Stdout, targets, res, *concurrency, *idle, len(hello), name)
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

func startBackend() *backend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	b := &backend{addr: ln.Addr().String()}
	chunk := make([]byte, 256<<10)
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

func startMeshgate(dir, backendAddr, name string) (*target, *proc, error) {
	bin := filepath.Join(dir, "meshgateway")
	build := exec.Command("go", "build", "-o", bin, "./examples/meshgateway")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, nil, fmt.Errorf("building meshgateway: %w", err)
	}
	svc := strings.SplitN(name, ".", 2)[0]
	addr := freePort()
	p, err := startProcEnv("meshgate", extraEnv, append([]string{bin, "-listen", addr, "-service", svc + "=" + backendAddr, "-log-level", "error"}, extraFlags...), filepath.Join(dir, "meshgate.log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: "meshgate", addr: addr, pids: func() []int { return []int{p.cmd.Process.Pid} }}, p, p.waitListening(addr)
}

func startNginx(dir, backendAddr, name string) (*target, *proc, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, nil, errors.New("nginx is not installed (scripts/peerbench.sh installs it)")
	}
	addr := freePort()
	conf := fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
worker_rlimit_nofile 19000;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log error;
events { worker_connections 9000; }
stream {
  map_hash_bucket_size 128;
  map $ssl_preread_server_name $upstream {
    %[2]s %[3]s;
    default 127.0.0.1:1;
  }
  server {
    listen %[4]s;
    ssl_preread on;
    proxy_pass $upstream;
    proxy_timeout 1h;
  }
}
`, dir, name, backendAddr, addr)
	path := filepath.Join(dir, "nginx.conf")
	check(os.WriteFile(path, []byte(conf), 0o644))
	p, err := startProc("nginx", []string{bin, "-c", path, "-e", filepath.Join(dir, "nginx-error.log")}, filepath.Join(dir, "nginx.log"))
	if err != nil {
		return nil, nil, err
	}
	return &target{name: "nginx", addr: addr, pids: func() []int { return withChildren(p.cmd.Process.Pid) }}, p, p.waitListening(addr)
}

func startHAProxy(dir, backendAddr, name string) (*target, *proc, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, nil, errors.New("haproxy is not installed (scripts/peerbench.sh installs it)")
	}
	addr := freePort()
	conf := fmt.Sprintf(`global
  maxconn 7000
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
`, addr, name, backendAddr)
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

// connRate runs workers that each connect, send the ClientHello and a byte,
// wait for the backend's one-byte reply and close, for d.
func connRate(addr string, hello []byte, workers int, d time.Duration) (perSec, p50, p99 float64) {
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
		log.Printf("  %d failed connections", n)
	}
	if len(lat) == 0 {
		return 0, 0, 0
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e6 }
	return float64(len(lat)) / elapsed.Seconds(), ms(0.50), ms(0.99)
}

// throughput moves bytes one way over streams connections for d.
func throughput(addr string, hello []byte, dir byte, streams int, d time.Duration) float64 {
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
			buf := make([]byte, 256<<10)
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
func idleCost(t *target, be *backend, hello []byte, n int) (kbPerConn, marginalKB, fdsPerConn float64, err error) {
	time.Sleep(2 * time.Second) // let earlier connections finish closing
	rss0, fd0 := usage(t.pids())
	msg := append(append([]byte(nil), hello...), 'I')
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	base := be.idle.Load()
	open := func(upTo int) error {
		for len(conns) < upTo {
			c, err := net.Dial("tcp", t.addr)
			if err != nil {
				return fmt.Errorf("after %d connections: %w", len(conns), err)
			}
			conns = append(conns, c)
			if _, err := c.Write(msg); err != nil {
				return err
			}
		}
		deadline := time.Now().Add(60 * time.Second)
		for be.idle.Load()-base < int64(upTo) {
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d connections reached the backend", be.idle.Load()-base, upTo)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		return nil
	}
	if err := open(n / 2); err != nil {
		return 0, 0, 0, err
	}
	rssHalf, _ := usage(t.pids())
	if err := open(n); err != nil {
		return 0, 0, 0, err
	}
	rss1, fd1 := usage(t.pids())
	return float64(rss1-rss0) / float64(n), float64(rss1-rssHalf) / float64(n-n/2), float64(fd1-fd0) / float64(n), nil
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

func report(w io.Writer, targets []*target, res map[string]map[string]float64, conc, idle, helloLen int, name string) {
	metrics := []string{"conn/s", "p50 ms", "p99 ms",
		"upload MB/s, 1 stream", "download MB/s, 1 stream", "upload MB/s, 8 streams", "download MB/s, 8 streams",
		"RSS KiB / idle conn", "  marginal, 2nd half", "fds / idle conn"}
	fmt.Fprintf(w, "\n%s, %d cores, %s; %d concurrent clients; %d idle connections; %d-byte ClientHello for %s\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), conc, idle, helloLen, name)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	header := "| metric\t"
	for _, t := range targets {
		header += " " + t.name + "\t"
	}
	header += " meshgate / nginx\t meshgate / haproxy\t"
	fmt.Fprintln(tw, header)
	sep := "|---\t"
	for range len(targets) + 2 {
		sep += "---\t"
	}
	fmt.Fprintln(tw, sep)
	for _, m := range metrics {
		row := "| " + m + "\t"
		for _, t := range targets {
			v, ok := res[m][t.name]
			if !ok {
				row += " -\t"
				continue
			}
			row += " " + format(v) + "\t"
		}
		for _, peer := range []string{"nginx", "haproxy"} {
			a, b := res[m]["meshgate"], res[m][peer]
			if b == 0 || a == 0 {
				row += " -\t"
			} else {
				row += fmt.Sprintf(" %.2fx\t", a/b)
			}
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nRatios are meshgate's value over the peer's: above 1 is better for rates and throughput, below 1 is better for latency, memory and descriptors.")
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
