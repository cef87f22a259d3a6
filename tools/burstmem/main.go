// Command burstmem measures the memory a burst of idle connections costs a
// gateway process, and what is left once they close. It starts the given
// meshgateway binary on loopback, routing service "api" to a sink, opens n
// connections with c clients at once, each sending one ClientHello and then
// nothing, and reads the gateway's resident memory from /proc (Linux):
//
//	go build -o /tmp/meshgateway ./examples/meshgateway
//	go run ./tools/burstmem -gateway /tmp/meshgateway -n 5000 -c 256 [-- -release-memory=false]
//
// It prints the RSS per connection 3 s after the last one reached the sink
// and again 11 s after (past meshgateway's quiet period), and the RSS above
// the start 12 s after every connection closed, with its anonymous part
// (heap and stacks: RssAnon) apart from the file-backed pages (the binary's
// code, faulted in as the connections' code first runs: RssFile).
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	gw := flag.String("gateway", "", "the meshgateway binary (required)")
	n := flag.Int("n", 5000, "connections to open")
	c := flag.Int("c", 256, "clients opening them at once")
	flag.Parse()
	if *gw == "" {
		flag.Usage()
		os.Exit(2)
	}
	r, err := measure(*gw, *n, *c, flag.Args(), schedule{early: 3 * time.Second, late: 11 * time.Second, afterClose: 12 * time.Second})
	check(err)
	fmt.Printf("%d connections opened in %v by %d clients: %.1f KiB each after 3 s, %.1f KiB after 11 s; "+
		"12 s after closing, %d KiB above the starting %d KiB, of which %d KiB anonymous (heap and stacks)\n",
		*n, r.opened.Round(time.Millisecond), *c, r.perConn(r.early), r.perConn(r.late), r.closed-r.start, r.start, r.closedAnon-r.startAnon)
}

// result is what measure read of the gateway's resident memory, in KiB.
type result struct {
	n                  int
	opened             time.Duration
	start, startAnon   int // before the first connection
	early, late        int // 3 s and 11 s after the last one reached the sink
	closed, closedAnon int // 12 s after they all closed
}

// perConn is the resident memory per connection at kb.
func (r result) perConn(kb int) float64 { return float64(kb-r.start) / float64(r.n) }

// schedule is when measure reads the memory: early and late after the last
// connection reached the sink (late zero: not read), afterClose after
// they all closed.
type schedule struct{ early, late, afterClose time.Duration }

// measure runs the gateway binary with extra arguments, opens n idle
// connections with c clients at once, and reads its memory at each point
// of when.
func measure(gw string, n, c int, extra []string, when schedule) (result, error) {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	defer sink.Close()
	var reached atomic.Int64
	go func() {
		for {
			conn, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { reached.Add(1); io.Copy(io.Discard, conn); conn.Close() }()
		}
	}()
	addr := freeAddr()
	args := append([]string{"-listen", addr, "-service", "api=" + sink.Addr().String(), "-log-level", "warn"}, extra...)
	cmd := exec.Command(gw, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := waitDial(addr); err != nil {
		return result{}, err
	}
	pid := cmd.Process.Pid
	hello, err := clientHello("api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul")
	if err != nil {
		return result{}, err
	}
	r := result{n: n}
	if r.start, r.startAnon, err = rss(pid); err != nil {
		return r, err
	}

	conns := make([]net.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, c)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				conn, err := net.Dial("tcp", addr)
				if err == nil {
					_, err = conn.Write(hello)
				}
				if err != nil {
					errs <- err
					return
				}
				conns[i] = conn
			}
		}()
	}
	wg.Wait()
	close(errs)
	defer func() {
		for _, conn := range conns {
			if conn != nil {
				conn.Close()
			}
		}
	}()
	if err := <-errs; err != nil {
		return r, err
	}
	r.opened = time.Since(start)
	for deadline := time.Now().Add(time.Minute); reached.Load() < int64(n); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return r, fmt.Errorf("only %d of %d connections reached the sink", reached.Load(), n)
		}
	}
	time.Sleep(when.early)
	if r.early, _, err = rss(pid); err != nil {
		return r, err
	}
	if when.late > when.early {
		time.Sleep(when.late - when.early)
		if r.late, _, err = rss(pid); err != nil {
			return r, err
		}
	}
	for i, conn := range conns {
		conn.Close()
		conns[i] = nil
	}
	time.Sleep(when.afterClose)
	r.closed, r.closedAnon, err = rss(pid)
	return r, err
}

// rss returns a process's resident memory in KiB, and its anonymous part.
func rss(pid int) (total, anon int, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	found := 0
	for sc.Scan() {
		for key, dst := range map[string]*int{"VmRSS:": &total, "RssAnon:": &anon} {
			if v, ok := strings.CutPrefix(sc.Text(), key); ok {
				*dst, _ = strconv.Atoi(strings.Fields(v)[0])
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("no VmRSS and RssAnon for pid %d", pid)
	}
	return total, anon, nil
}

// clientHello returns the first flight of a Go TLS client for name.
func clientHello(name string) ([]byte, error) {
	a, b := net.Pipe()
	go tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 16<<10)
	k, err := b.Read(buf)
	b.Close()
	return buf[:k], err
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

func waitDial(addr string) error {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the gateway never listened on %s", addr)
		}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
