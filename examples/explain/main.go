// Command explain prints, for every upstream of every service definition in
// the given files, which mesh-gateway mode applies, which layer decided it,
// the SNI the sidecar sends, the addresses it dials and the hops its bytes
// take. With -route it prints instead how a mesh gateway with the same
// files routes each name given: the route's kind (service, gateway,
// wan-federation, exported-service, ...), its name and targets, or the
// reason it is refused.
//
//	go run ./examples/explain [flags] PATH...
//	go run ./examples/explain -consul [flags]
//	go run ./examples/explain -route NAME [-route NAME...] [flags] PATH...
//
// PATH is a file or a directory of *.hcl, *.json, *.yaml and *.yml files:
// Consul config entries (proxy-defaults, service-defaults, mesh), agent
// service definitions, and optionally a meshgate topology document that says
// where services and gateways are. Output is one JSON object per upstream per
// line, or an aligned table with -format text. On bad input it prints every
// problem to stderr, nothing to stdout, and exits 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/examples/internal/cli"
	"github.com/meshgate/meshgate/internal/problems"
	"github.com/meshgate/meshgate/resolve"
	"github.com/meshgate/meshgate/routing"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	datacenter := fs.String("datacenter", "dc1", "local datacenter (a topology document's datacenter must agree)")
	trustDomain := fs.String("trust-domain", config.DefaultTrustDomain, "trust domain, <cluster-id>.consul (a topology document's must agree)")
	format := fs.String("format", "json", "output format: json (one object per line) or text (a table)")
	useConsul := fs.Bool("consul", false, "plan from the local Consul agent (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...): its config entries, proxy registrations and catalog")
	var routeNames listFlag
	fs.Var(&routeNames, "route", "a server name: print how a mesh gateway routes it instead of planning upstreams (repeatable)")
	gatewayService := fs.String("gateway-service", routing.DefaultGatewayService, "with -route: the gateway's own service name, whose service-defaults' UpstreamConfig.Defaults.Limits bound its routes")
	federate := fs.Bool("wan-federation", false, "with -consul -route: route as a gateway registered for WAN federation through mesh gateways (the consul-wan-federation meta); from files, the topology's wan_federation block says so")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: explain [flags] PATH...\n\nPlans every upstream of every service definition in PATH (files or directories).\n\n")
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args); err != nil {
		return cli.ExitCode(stderr, "explain", err)
	}
	if *format != "json" && *format != "text" {
		return cli.ExitCode(stderr, "explain", cli.Usagef("-format %q: want json or text", *format))
	}
	if fs.NArg() == 0 && !*useConsul {
		fs.Usage()
		return 2
	}
	if *federate && (!*useConsul || len(routeNames) == 0) {
		return cli.ExitCode(stderr, "explain", cli.Usagef("-wan-federation goes with -consul and -route"))
	}
	if len(routeNames) > 0 {
		return explainRoutes(fs, routeNames, *useConsul, *federate, *gatewayService, *datacenter, *trustDomain, *format, stdout, stderr)
	}
	var plans []resolve.Plan
	var err error
	if *useConsul {
		plans, err = explainConsul(fs)
	} else {
		plans, err = explain(fs, *datacenter, *trustDomain)
	}
	if err != nil {
		fmt.Fprintf(stderr, "explain: %v\n", err)
		return 1
	}
	if len(plans) == 0 {
		fmt.Fprintln(stderr, "explain: no upstreams found (no connect-proxy registration or sidecar_service with upstreams)")
		return 0
	}
	if *format == "text" {
		writeTable(stdout, plans)
		return 0
	}
	enc := json.NewEncoder(stdout)
	for _, p := range plans {
		if err := enc.Encode(p); err != nil {
			fmt.Fprintf(stderr, "explain: %v\n", err)
			return 1
		}
	}
	return 0
}

func explain(fs *flag.FlagSet, datacenter, trustDomain string) ([]resolve.Plan, error) {
	src, err := staticSource(fs, datacenter, trustDomain)
	if err != nil {
		return nil, err
	}
	return resolve.PlanAll(src.View()), nil
}

// staticSource loads the files named on the command line.
func staticSource(fs *flag.FlagSet, datacenter, trustDomain string) (*config.Static, error) {
	set, err := config.Load(fs.Args()...)
	if err != nil {
		return nil, err
	}
	if t := set.Topology; t != nil {
		var errs []error
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "datacenter" && t.Datacenter != "" && !strings.EqualFold(t.Datacenter, datacenter) {
				errs = append(errs, fmt.Errorf("-datacenter %q disagrees with the topology's datacenter %q", datacenter, t.Datacenter))
			}
			if f.Name == "trust-domain" && t.TrustDomain != "" && t.TrustDomain != trustDomain {
				errs = append(errs, fmt.Errorf("-trust-domain %q disagrees with the topology's trust_domain %q", trustDomain, t.TrustDomain))
			}
		})
		if err := problems.Join(errs...); err != nil {
			return nil, err
		}
	}
	return config.NewStatic(set, config.StaticOptions{Datacenter: datacenter, TrustDomain: trustDomain})
}

// explainConsul plans every upstream of every proxy registered with the
// local agent, from the agent's live view.
func explainConsul(fs *flag.FlagSet) ([]resolve.Plan, error) {
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("-consul reads the agent, not files: drop %q", fs.Args())
	}
	client, closeClient, err := consulClient()
	if err != nil {
		return nil, err
	}
	defer closeClient()
	src, err := consulview.New(context.Background(), client, consulview.Options{Once: true})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	instances, err := consulview.AgentInstances(client)
	if err != nil {
		return nil, err
	}
	var plans []resolve.Plan
	v := src.View()
	for _, inst := range instances {
		plans = append(plans, resolve.PlanInstance(v, consulview.UnmergeCentralConfig(v, inst))...)
	}
	return plans, nil
}

// writeTable writes one row per upstream, and under it one per failover
// target of its discovery chain.
func writeTable(w io.Writer, plans []resolve.Plan) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tUPSTREAM\tDATACENTER\tMODE\tSOURCE\tROUTE\tHEALTHY\tDIAL\tHOPS\tWARNINGS")
	for _, p := range plans {
		upstream := p.Upstream
		if p.Redirected() || p.Subset != "" { // a service-resolver moved it
			upstream += " => " + p.Target.Service
			if p.Subset != "" {
				upstream += " subset " + p.Subset
			}
		}
		row(tw, p.Service, upstream, p.Chain()[0], strings.Join(p.Warnings, "; "))
		for i, f := range p.Failover {
			row(tw, "", fmt.Sprintf("  failover %d: %s", i+1, f), f, "")
		}
	}
	tw.Flush()
}

func row(tw io.Writer, service, upstream string, t resolve.Target, warnings string) {
	where := t.Datacenter
	if t.Peer != "" {
		where = "peer " + t.Peer
	}
	mode := string(t.Mode)
	if mode == "" {
		mode = `""`
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", orDash(service), upstream, where, mode, t.Layer, t.Route, t.Healthy,
		orDash(strings.Join(t.Dial, ",")), strings.Join(t.Hops, " -> "), orDash(warnings))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
