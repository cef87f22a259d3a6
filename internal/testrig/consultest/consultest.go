// Package consultest starts real Consul agents for tests: a pinned Consul
// built from the Go module proxy by scripts/build-consul.sh and cached outside
// the repository, run as single-server clusters on random loopback ports.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
)

// BinaryEnv names a Consul binary to use instead of building one.
const BinaryEnv = "MESHGATE_CONSUL_BIN"

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns a Consul binary: $MESHGATE_CONSUL_BIN, or the cached build
// of scripts/build-consul.sh, building it the first time (about 5 CPU-minutes
// on 2 cores, from the Go module proxy). It fails the test, loudly, if
// neither works: tests that need Consul are never skipped.
func Binary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		if p := os.Getenv(BinaryEnv); p != "" {
			binPath = p
			return
		}
		root, err := repoRoot()
		if err != nil {
			binErr = err
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "build-consul.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("building Consul with scripts/build-consul.sh: %v\n%s", err, tail(stderr.String(), 2000))
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	if binErr != nil {
		tb.Fatalf("consultest: no Consul binary (set %s or let scripts/build-consul.sh build one): %v", BinaryEnv, binErr)
	}
	return binPath
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "scripts", "build-consul.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("scripts/build-consul.sh not found above the working directory")
		}
		dir = parent
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Options configures an agent.
type Options struct {
	// Datacenter defaults to "dc1"; PrimaryDatacenter to Datacenter.
	Datacenter        string
	PrimaryDatacenter string
	// JoinWAN is another agent to WAN-join (federation).
	JoinWAN *Agent
	// ACL turns on ACLs with default deny; the management token is
	// ManagementToken.
	ACL bool
	// ExtraConfig is HCL appended to the agent's configuration, such as
	// limits { http_max_conns_per_client = 16 }.
	ExtraConfig string
	// TLS gives the server its certificate for RPC, from the CA of
	// TLS (see NewTLS), and makes it verify its peers' (incoming and
	// outgoing, with server hostnames checked), as Consul requires for
	// WAN federation through mesh gateways.
	TLS *TLS
	// WANFederation federates the servers through mesh gateways
	// (connect { enable_mesh_gateway_wan_federation = true }); it needs
	// TLS. A secondary names the primary's gateways in PrimaryGateways.
	WANFederation   bool
	PrimaryGateways []string
	// UnreachableWAN advertises the server's WAN address as one nothing
	// listens on (127.0.0.254), so that no other datacenter's server can
	// reach it directly: only through mesh gateways.
	UnreachableWAN bool
	// TLSOnly closes the agent's plaintext ports, as production agents do:
	// ports.http = -1 and ports.grpc = -1, with HTTPS (HTTPSAddr) that
	// requires a client certificate from TLS (tls.https.verify_incoming)
	// and gRPC over TLS (GRPCTLS) only. It needs TLS. Client, Config and
	// Env then speak HTTPS with TLS's client certificate.
	TLSOnly bool
}

// ManagementToken is the initial management token of agents with ACL (the
// primary's; secondaries use it as their agent and replication token).
const ManagementToken = "8f2c2b7a-9a3e-4a50-8c0e-6a9d3c1f0b11"

// Agent is one running Consul server agent.
type Agent struct {
	Datacenter string
	// NodeName is the agent's node, "node-<datacenter>".
	NodeName string
	// HTTPAddr is the plaintext HTTP address (ports.http), empty with
	// Options.TLSOnly; HTTPSAddr the HTTPS one (ports.https), empty
	// without it.
	HTTPAddr  string
	HTTPSAddr string
	// GRPCTLS is the gRPC TLS address (ports.grpc_tls).
	GRPCTLS string
	// GRPC is the plaintext gRPC address (ports.grpc), where the agent
	// serves xDS to the proxies registered with it; empty with
	// Options.TLSOnly.
	GRPC    string
	SerfWAN string
	// ServerRPC is the server RPC address (ports.server), where WAN
	// federation through mesh gateways reaches the server.
	ServerRPC string
	// Client talks to the agent (with the management token under ACL).
	Client *api.Client

	tb      testing.TB
	bin     string
	dir     string
	cfgFile string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has ended
	log     *syncbuf.Buffer
	acl     bool
	tls     *TLS // with Options.TLSOnly
}

// Start starts an agent and waits until it has a leader and a Connect CA.
// It stops when the test ends.
func Start(tb testing.TB, opts Options) *Agent {
	tb.Helper()
	if opts.Datacenter == "" {
		opts.Datacenter = "dc1"
	}
	if opts.PrimaryDatacenter == "" {
		opts.PrimaryDatacenter = opts.Datacenter
	}
	if opts.TLSOnly && opts.TLS == nil {
		tb.Fatal("consultest: Options.TLSOnly needs Options.TLS")
	}
	a := &Agent{Datacenter: opts.Datacenter, NodeName: "node-" + opts.Datacenter, tb: tb, bin: Binary(tb), dir: tb.TempDir(), acl: opts.ACL}
	a.cfgFile = filepath.Join(a.dir, "agent.hcl")
	tb.Cleanup(a.Stop)
	// The ports were free when picked, but another test may take one
	// meanwhile (or any connection, where they come from the ephemeral
	// range): an agent that cannot bind gets new ones.
	for attempt := 1; ; attempt++ {
		a.configure(opts, pickPorts(tb, 6))
		a.start()
		err := a.waitReady()
		if err == nil {
			return a
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			tb.Fatalf("consultest: agent %s not ready: %v\n%s", a.Datacenter, err, tail(a.log.String(), 3000))
		}
		tb.Logf("consultest: agent %s could not bind a port; starting it again on others", a.Datacenter)
		os.RemoveAll(filepath.Join(a.dir, "data"))
	}
}

// configure writes the agent's configuration for ports (HTTP, gRPC TLS,
// serf LAN, serf WAN, server RPC, gRPC) and points Client at it.
func (a *Agent) configure(opts Options, ports []int) {
	tb := a.tb
	tb.Helper()
	a.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	a.GRPCTLS = fmt.Sprintf("127.0.0.1:%d", ports[1])
	a.SerfWAN = fmt.Sprintf("127.0.0.1:%d", ports[3])
	a.ServerRPC = fmt.Sprintf("127.0.0.1:%d", ports[4])
	a.GRPC = fmt.Sprintf("127.0.0.1:%d", ports[5])
	http, https, grpc := ports[0], -1, ports[5]
	if opts.TLSOnly {
		a.tls = opts.TLS
		a.HTTPSAddr, a.HTTPAddr, a.GRPC = a.HTTPAddr, "", ""
		http, https, grpc = -1, ports[0], -1
	}
	connect := "connect { enabled = true }"
	if opts.WANFederation {
		connect = "connect {\n  enabled = true\n  enable_mesh_gateway_wan_federation = true\n}"
	}
	cfg := fmt.Sprintf(`datacenter = %q
primary_datacenter = %q
node_name = %q
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
server = true
bootstrap_expect = 1
log_level = "warn"
%s
ports {
  http = %d
  https = %d
  grpc = %d
  grpc_tls = %d
  dns = -1
  serf_lan = %d
  serf_wan = %d
  server = %d
}
performance { raft_multiplier = 1 }
`, opts.Datacenter, opts.PrimaryDatacenter, a.NodeName, filepath.Join(a.dir, "data"), connect, http, https, grpc, ports[1], ports[2], ports[3], ports[4])
	if opts.JoinWAN != nil {
		cfg += fmt.Sprintf("retry_join_wan = [%q]\n", opts.JoinWAN.SerfWAN)
	}
	if opts.TLS != nil {
		cfg += opts.TLS.agentConfig(tb, opts.Datacenter, a.NodeName, opts.TLSOnly)
	}
	if len(opts.PrimaryGateways) > 0 {
		// The first WAN join runs before the primary's gateways are
		// resolved and fails; the next waits retry_interval_wan (30 s by
		// default).
		cfg += fmt.Sprintf("primary_gateways = %s\nprimary_gateways_interval = \"5s\"\nretry_interval_wan = \"2s\"\n", hclList(opts.PrimaryGateways))
	}
	if opts.UnreachableWAN {
		cfg += "advertise_addr_wan = \"127.0.0.254\"\n"
	}
	switch {
	case opts.ACL && opts.PrimaryDatacenter == opts.Datacenter:
		cfg += fmt.Sprintf("acl {\n  enabled = true\n  default_policy = \"deny\"\n  tokens { initial_management = %q }\n}\n", ManagementToken)
	case opts.ACL:
		// A secondary replicates the primary's policies and tokens, with
		// the primary's management token.
		cfg += fmt.Sprintf("acl {\n  enabled = true\n  default_policy = \"deny\"\n  enable_token_replication = true\n  tokens {\n    agent = %q\n    replication = %q\n  }\n}\n", ManagementToken, ManagementToken)
	}
	cfg += opts.ExtraConfig + "\n"
	if err := os.WriteFile(a.cfgFile, []byte(cfg), 0o644); err != nil {
		tb.Fatal(err)
	}
	token := ""
	if opts.ACL {
		token = ManagementToken
	}
	a.Client = a.ClientWithToken(token)
}

// start starts the agent's process; exited is closed when it ends.
func (a *Agent) start() {
	a.tb.Helper()
	a.log = &syncbuf.Buffer{}
	a.cmd = exec.Command(a.bin, "agent", "-config-file", a.cfgFile)
	a.cmd.Env = agentEnv(os.Environ())
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	a.cmd.SysProcAttr = dieWithParent()
	if err := startCmd(a.cmd); err != nil {
		a.tb.Fatalf("consultest: starting consul: %v", err)
	}
	exited, cmd := make(chan struct{}), a.cmd
	a.exited = exited
	go func() { cmd.Wait(); close(exited) }()
}

// agentEnv is env without the fips140 setting of GODEBUG: the tests run
// under GODEBUG=fips140=only (CI's FIPS step) test meshgate's code, and
// Consul, which is no FIPS build and uses SHA-1 for its CA roots' IDs,
// would panic under it.
func agentEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			var keep []string
			for _, s := range strings.Split(v, ",") {
				if !strings.HasPrefix(s, "fips140=") && s != "" {
					keep = append(keep, s)
				}
			}
			if len(keep) == 0 {
				continue
			}
			kv = "GODEBUG=" + strings.Join(keep, ",")
		}
		out = append(out, kv)
	}
	return out
}

// errPortTaken is waitReady's error for an agent that ended because one of
// its ports was taken.
var errPortTaken = errors.New("a port the agent was to listen on was taken")

// waitReady waits for a leader, the Connect CA and the agent's own node;
// it returns at once if the agent ends first.
func (a *Agent) waitReady() error {
	a.tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-a.exited:
			if strings.Contains(a.log.String(), "address already in use") {
				return errPortTaken
			}
			return errors.New("the agent ended")
		default:
		}
		leader, err := a.Client.Status().Leader()
		if err == nil && leader != "" {
			roots, _, err2 := a.Client.Connect().CARoots(nil)
			if err2 == nil && roots.TrustDomain != "" {
				if _, _, err3 := a.Client.Catalog().Node(a.NodeName, nil); err3 == nil {
					return nil
				} else {
					last = err3
				}
			} else {
				last = err2
			}
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	if last == nil {
		last = errors.New("no answer in 60 s")
	}
	return last
}

// Stop stops the agent (SIGTERM, then SIGKILL). Its data stays for Restart.
func (a *Agent) Stop() {
	if a.cmd == nil || a.exited == nil {
		return
	}
	select {
	case <-a.exited:
		return
	default:
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		<-a.exited
	}
}

// Restart starts a stopped agent again, with the same ports and data.
func (a *Agent) Restart() {
	a.tb.Helper()
	a.start()
	if err := a.waitReady(); err != nil {
		a.tb.Fatalf("consultest: agent %s not ready after a restart: %v\n%s", a.Datacenter, err, tail(a.log.String(), 3000))
	}
}

// TrustDomain returns the cluster's trust domain.
func (a *Agent) TrustDomain() string {
	a.tb.Helper()
	roots, _, err := a.Client.Connect().CARoots(nil)
	if err != nil {
		a.tb.Fatal(err)
	}
	return roots.TrustDomain
}

// hclList writes ss as an HCL list of strings.
func hclList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Log returns what the agent printed.
func (a *Agent) Log() string { return a.log.String() }

// ClientWithToken returns a client of this agent that uses token (none
// when empty), over HTTPS with a client certificate with Options.TLSOnly.
func (a *Agent) ClientWithToken(token string) *api.Client {
	c, err := api.NewClient(a.Config(token))
	if err != nil {
		a.tb.Fatal(err)
	}
	return c
}

// Config returns the client configuration of this agent with token (none
// when empty): its HTTP address, or with Options.TLSOnly its HTTPS address
// with the CA and a client certificate.
func (a *Agent) Config(token string) *api.Config {
	cc := &api.Config{Address: a.HTTPAddr, Scheme: "http", Token: token}
	if a.tls != nil {
		cert, key := a.tls.ClientFiles(a.tb)
		cc.Address, cc.Scheme = a.HTTPSAddr, "https"
		cc.TLSConfig = api.TLSConfig{CAFile: a.tls.CAFile(), CertFile: cert, KeyFile: key}
	}
	return cc
}

// Env returns the environment a program such as the consul command or
// meshgateway needs to reach this agent with token (none when empty):
// CONSUL_HTTP_ADDR and CONSUL_GRPC_ADDR (https:// with Options.TLSOnly, with
// CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY and
// CONSUL_GRPC_CACERT), CONSUL_HTTP_TOKEN, and nothing else of the CONSUL_
// variables the test process has.
func (a *Agent) Env(token string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	if token != "" {
		env = append(env, api.HTTPTokenEnvName+"="+token)
	}
	if a.tls == nil {
		return append(env, api.HTTPAddrEnvName+"="+a.HTTPAddr, api.GRPCAddrEnvName+"="+a.GRPC)
	}
	cert, key := a.tls.ClientFiles(a.tb)
	return append(env, api.HTTPAddrEnvName+"=https://"+a.HTTPSAddr, api.HTTPCAFile+"="+a.tls.CAFile(),
		api.HTTPClientCert+"="+cert, api.HTTPClientKey+"="+key,
		api.GRPCAddrEnvName+"=https://"+a.GRPCTLS, api.GRPCCAFileEnvName+"="+a.tls.CAFile())
}

// Token creates a policy named name with rules (Consul's ACL rule
// language) and a token linked to it, with the management token, and
// returns the token's secret. The agent needs Options.ACL.
func (a *Agent) Token(tb testing.TB, name, rules string) string {
	tb.Helper()
	acl := a.Client.ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		tb.Fatalf("consultest: creating policy %s: %v", name, err)
	}
	token, _, err := acl.TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		tb.Fatalf("consultest: creating a token of policy %s: %v", name, err)
	}
	return token.SecretID
}

// pickPorts picks an agent's ports; tests of this package replace it.
var pickPorts = freePorts

// freePorts returns n distinct loopback ports that were free a moment ago
// (TCP and UDP, as serf needs both). It picks them below the machine's
// ephemeral range when it can (portBand), where no outgoing connection can
// take one before the agent binds it, or while a stopped agent waits to
// restart on it; else wherever the system gives.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var out []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	lo, hi, banded := portBand()
	for tries := 0; len(out) < n; tries++ {
		addr := "127.0.0.1:0"
		if banded && tries < 10000 {
			addr = fmt.Sprintf("127.0.0.1:%d", lo+rand.IntN(hi-lo))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if addr != "127.0.0.1:0" {
				continue // taken
			}
			tb.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			l.Close()
			continue
		}
		u.Close()
		held = append(held, l)
		out = append(out, port)
	}
	return out
}

// FreeAddr returns a loopback address whose port was free a moment ago,
// picked as the agents' ports are: for a listener a test restarts on the
// same address.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freePorts(tb, 1)[0])
}

// portBand returns the ports agents take, [lo, hi): from 2000 to the start
// of the machine's ephemeral range (Linux's ip_local_port_range), but not
// above 8000, which keeps clear of the fixed ports the guides use (8300 and
// up). ok is false where there is no such range, or too small a band.
func portBand() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, 0, false
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, 0, false
	}
	lo, hi = 2000, min(low, 8000)
	return lo, hi, hi-lo >= 1000
}

// WaitFor polls cond for up to timeout; tests assert outcomes, not timings.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Listen listens on addr, waiting while it is still taken: a gateway
// restarted on its old address may find the port held for a moment by the
// process that just let it go. An empty addr is a port picked as agents'
// are (FreeAddr), outside the ephemeral range where the machine has one, so
// that no outgoing connection takes it while the gateway is down.
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = FreeAddr(t)
	}
	var ln net.Listener
	WaitFor(t, time.Minute, "the address "+addr+" to be free", func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return ln
}
