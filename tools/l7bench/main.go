// Command l7bench measures what terminating a peer's HTTP export costs:
// requests per second and latency percentiles of a peer's client reaching
// an exported http service through a meshgate gateway that terminates it
// in the process (a routing.PeeringRouter whose Terminate is an l7.Terminator's
// ServeConn, as meshgateway -l7-exports terminate runs it) against the
// same gateway passing it through as TCP (-l7-exports passthrough), both
// to the same mTLS instance, in one run, alternating rounds; and a gateway
// that sends them to the terminator's own port instead
// (routing.PeeringRouter.L7), which shows what that loopback hop costs.
//
//	go run ./tools/l7bench [-duration 5s] [-rounds 3] [-c 16,128] [-body 1024]
//
// Each client holds one keep-alive connection (HTTP/1.1) and sends GETs
// back to back. Certificates come from two throwaway CAs (the exporting
// cluster's and the peer's); nothing needs Consul. Gateway, terminator,
// instance and clients share this process and the machine's cores, as the
// numbers say. It only ever connects to 127.0.0.1. It is not part of the
// test suite.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/routing/l7"
	"github.com/meshgate/meshgate/sidecar"
	"github.com/meshgate/meshgate/sidecar/sidecartest"
	"github.com/meshgate/meshgate/sni"
)

const (
	tdLocal = "bbbbbbbb-0000-4000-8000-000000000002.consul"
	tdPeer  = "aaaaaaaa-0000-4000-8000-000000000001.consul"
)

func main() {
	duration := flag.Duration("duration", 5*time.Second, "length of each run")
	rounds := flag.Int("rounds", 3, "rounds; each runs both paths at every concurrency, the order alternating")
	conc := flag.String("c", "16,128", "comma-separated numbers of concurrent clients")
	body := flag.Int("body", 1024, "bytes in each response body")
	only := flag.String("only", "", "run this path only: terminated, terminated-via-port or passthrough")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	var levels []int
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			log.Fatalf("l7bench: -c %q: want positive numbers", *conc)
		}
		levels = append(levels, n)
	}
	b, err := setUp(*body)
	if err != nil {
		log.Fatal(err)
	}
	paths := []string{"terminated", "terminated-via-port", "passthrough"}
	if *only != "" {
		if !slices.Contains(paths, *only) {
			log.Fatalf("l7bench: -only %q: want one of %v", *only, paths)
		}
		paths = []string{*only}
	}
	results := map[string]map[int][]result{}
	for _, p := range paths {
		results[p] = map[int][]result{}
	}
	for r := range *rounds {
		for _, c := range levels {
			order := slices.Clone(paths)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, p := range order {
				res, err := b.run(p, c, *duration)
				if err != nil {
					log.Fatalf("l7bench: %s at %d clients: %v", p, c, err)
				}
				results[p][c] = append(results[p][c], res)
				fmt.Fprintf(os.Stderr, "round %d  %-19s  c=%-4d  %8.0f req/s  p50 %v  p99 %v  errors %d\n", r+1, p, c, res.rate, res.p50, res.p99, res.errors)
			}
		}
	}
	fmt.Printf("l7bench: %d rounds of %v, %d-byte bodies, HTTP/1.1 keep-alive, GOMAXPROCS %d\n", *rounds, *duration, *body, runtime.GOMAXPROCS(0))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "clients\tpath\treq/s median [range]\tp50 median\tp99 median [range]\t/passthrough req/s\tp99")
	for _, c := range levels {
		p := results["passthrough"][c]
		for _, name := range paths {
			rs := results[name][c]
			fmt.Fprintf(tw, "%d\t%s\t%.0f [%.0f-%.0f]\t%v\t%v [%v-%v]\t", c, name, median(rs, rate), minOf(rs, rate), maxOf(rs, rate),
				time.Duration(median(rs, p50)), time.Duration(median(rs, p99)), time.Duration(minOf(rs, p99)), time.Duration(maxOf(rs, p99)))
			if name != "passthrough" && len(p) > 0 {
				fmt.Fprintf(tw, "%.2fx [%.2f-%.2f]\t%.2fx\n", median(rs, rate)/median(p, rate), minOf(rs, rate)/maxOf(p, rate), maxOf(rs, rate)/minOf(p, rate),
					median(rs, p99)/median(p, p99))
			} else {
				fmt.Fprintln(tw, "\t")
			}
		}
	}
	tw.Flush()
}

// result is one run.
type result struct {
	rate     float64
	p50, p99 time.Duration
	errors   int
}

func rate(r result) float64 { return r.rate }
func p50(r result) float64  { return float64(r.p50) }
func p99(r result) float64  { return float64(r.p99) }

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func minOf(rs []result, f func(result) float64) float64 {
	m := f(rs[0])
	for _, r := range rs[1:] {
		m = min(m, f(r))
	}
	return m
}

func maxOf(rs []result, f func(result) float64) float64 {
	m := f(rs[0])
	for _, r := range rs[1:] {
		m = max(m, f(r))
	}
	return m
}

// bench is the three gateways, the terminator and the instance.
type bench struct {
	terminated, viaPort, passthrough string // the gateways' addresses
	client                           *tls.Config
}

// setUp starts the instance, the terminator and the three gateways.
func setUp(bodySize int) (*bench, error) {
	local, err := sidecartest.NewCA(tdLocal)
	if err != nil {
		return nil, err
	}
	peer, err := sidecartest.NewCA(tdPeer)
	if err != nil {
		return nil, err
	}
	// The instance accepts the exporting cluster's clients (the terminating
	// gateway) and, for passthrough, the peer's.
	apiCerts, err := local.Certs(sidecar.Identity{Service: "api", Datacenter: "dc1"})
	if err != nil {
		return nil, err
	}
	clients := apiCerts.Roots().Clone()
	clients.AppendCertsFromPEM([]byte(peer.RootPEM()))
	payload := []byte(strings.Repeat("x", bodySize))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(payload) }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{*apiCerts.Certificate()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clients},
		ErrorLog:  log.New(io.Discard, "", 0)}
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.ServeTLS(apiLn, "", "")

	gwLeaf, err := local.Leaf("spiffe://" + tdLocal + "/gateway/mesh/dc/dc1")
	if err != nil {
		return nil, err
	}
	src, err := config.StaticView(&mesh.View{Datacenter: "dc1", TrustDomain: tdLocal,
		Services:        map[mesh.ServiceKey][]mesh.Endpoint{{Name: "api"}: {{Address: apiLn.Addr().String()}}},
		ServiceDefaults: map[mesh.EntryKey]*api.ServiceConfigEntry{{Name: "api"}: {Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}},
		Exports:         map[mesh.ServiceKey][]string{{Name: "api"}: {"cluster-a"}},
		Peers:           map[string]mesh.Peer{"cluster-a": {Name: "cluster-a", TrustDomain: tdPeer, Roots: []string{peer.RootPEM()}}},
	})
	if err != nil {
		return nil, err
	}
	term := &l7.Terminator{Source: src, Certs: sidecar.StaticCerts(gwLeaf, apiCerts.Roots(), tdLocal)}
	termLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go term.Serve(termLn)
	b := &bench{}
	for _, g := range []struct {
		addr   *string
		router *routing.PeeringRouter
	}{
		{&b.terminated, &routing.PeeringRouter{Source: src, Terminate: term.ServeConn}},
		{&b.viaPort, &routing.PeeringRouter{Source: src, L7: termLn.Addr().String()}},
		{&b.passthrough, &routing.PeeringRouter{Source: src, PassThroughL7Exports: true}},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		s := &gateway.Server{Router: g.router}
		go s.Serve(ln)
		*g.addr = ln.Addr().String()
	}
	webLeaf, err := peer.Leaf(sidecar.Identity{TrustDomain: tdPeer, Datacenter: "dc1", Service: "web"}.String())
	if err != nil {
		return nil, err
	}
	servers := apiCerts.Roots()
	b.client = &tls.Config{ServerName: sni.PeeredServiceSNI("api", "", "", "cluster-a", tdLocal), Certificates: []tls.Certificate{webLeaf},
		NextProtos: []string{"http/1.1"}, InsecureSkipVerify: true, // the chain is checked below, as a sidecar checks it
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := sidecar.VerifyPeerChain(raw, servers)
			return err
		}}
	return b, nil
}

// run drives path with c clients for d.
func (b *bench) run(path string, c int, d time.Duration) (result, error) {
	addr := map[string]string{"terminated": b.terminated, "terminated-via-port": b.viaPort, "passthrough": b.passthrough}[path]
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{MaxConnsPerHost: 1, DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&tls.Dialer{Config: b.client}).DialContext(ctx, "tcp", addr)
			}}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			mine := make([]time.Duration, 0, 4096)
			bad := 0
			for ctx.Err() == nil {
				start := time.Now()
				resp, err := client.Get("https://api/")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					if ctx.Err() == nil {
						bad++
					}
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		}()
	}
	start := time.Now()
	wg.Wait()
	elapsed := time.Since(start)
	if len(lat) == 0 {
		return result{}, fmt.Errorf("no request succeeded (%d errors)", errs)
	}
	slices.Sort(lat)
	return result{rate: float64(len(lat)) / elapsed.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], errors: errs}, nil
}
