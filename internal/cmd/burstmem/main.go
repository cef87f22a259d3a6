// Command burstmem measures the memory a burst of idle connections costs a
// gateway process, and what is left once they close. It starts the given
// meshgateway binary on loopback, routing service "api" to a sink, opens n
// connections with c clients at once, each sending one ClientHello and then
// nothing, and reads the gateway's resident memory from /proc (Linux):
//
//	go build -o /tmp/meshgateway ./examples/meshgateway
//	go run ./internal/cmd/burstmem -gateway /tmp/meshgateway -n 5000 -c 256 [-- -release-memory=false]
//
// It prints the RSS per connection 3 s after the last one reached the sink
// and again 11 s after (past meshgateway's quiet period), and the RSS above
// the start 12 s after every connection closed.
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
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
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
	args := append([]string{"-listen", addr, "-service", "api=" + sink.Addr().String(), "-log-level", "warn"}, flag.Args()...)
	cmd := exec.Command(*gw, args...)
	cmd.Stderr = os.Stderr
	check(cmd.Start())
	defer cmd.Process.Kill()
	waitDial(addr)
	pid := cmd.Process.Pid
	hello := clientHello("api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul")
	rss0 := rss(pid)

	conns := make([]net.Conn, *n)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range *c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(*n); i = next.Add(1) - 1 {
				conn, err := net.Dial("tcp", addr)
				check(err)
				_, err = conn.Write(hello)
				check(err)
				conns[i] = conn
			}
		}()
	}
	wg.Wait()
	opened := time.Since(start)
	for deadline := time.Now().Add(time.Minute); reached.Load() < int64(*n); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			log.Fatalf("only %d of %d connections reached the sink", reached.Load(), *n)
		}
	}
	time.Sleep(3 * time.Second)
	early := rss(pid)
	time.Sleep(8 * time.Second)
	late := rss(pid)
	for _, conn := range conns {
		conn.Close()
	}
	time.Sleep(12 * time.Second)
	closed := rss(pid)
	per := func(kb int) float64 { return float64(kb-rss0) / float64(*n) }
	fmt.Printf("%d connections opened in %v by %d clients: %.1f KiB each after 3 s, %.1f KiB after 11 s; "+
		"12 s after closing, %d KiB above the starting %d KiB\n",
		*n, opened.Round(time.Millisecond), *c, per(early), per(late), closed-rss0, rss0)
}

// rss returns a process's resident memory in KiB.
func rss(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	check(err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return kb
		}
	}
	log.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// clientHello returns the first flight of a Go TLS client for name.
func clientHello(name string) []byte {
	a, b := net.Pipe()
	go tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 16<<10)
	k, err := b.Read(buf)
	check(err)
	b.Close()
	return buf[:k]
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

func waitDial(addr string) {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			log.Fatalf("the gateway never listened on %s", addr)
		}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
