package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// routeRow is how a gateway routes one server name.
type routeRow struct {
	ServerName       string   `json:"server_name"`
	Kind             string   `json:"kind,omitempty"`
	Route            string   `json:"route,omitempty"`
	Targets          []string `json:"targets,omitempty"`
	Remote           bool     `json:"remote,omitempty"`
	ConnectTimeoutMS int64    `json:"connect_timeout_ms,omitempty"`
	// Balance is the load-balancing policy the gateway applies to the
	// targets, Weights their weights (all 1: none), Limits the route's
	// limits from the gateway's own service-defaults.
	Balance  string         `json:"balance,omitempty"`
	Weights  []int          `json:"weights,omitempty"`
	Limits   map[string]int `json:"limits,omitempty"`
	Rejected string         `json:"rejected,omitempty"`
	Error    string         `json:"error,omitempty"`
}

// explainRoutes prints how a mesh gateway routes each name: the router is
// the one examples/meshgateway runs (routing.New's: WAN federation, then
// cluster peering, then the mesh).
func explainRoutes(fs *flag.FlagSet, names []string, useConsul, federate bool, gatewayService, datacenter, trustDomain, format string, stdout, stderr io.Writer) int {
	var src mesh.Source
	if useConsul {
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "explain: -consul reads the agent, not files: drop %q\n", fs.Args())
			return 1
		}
		client, closeClient, err := consulClient()
		if err == nil {
			defer closeClient()
			var cs *consulview.Source
			cs, err = consulview.New(context.Background(), client, consulview.Options{WANFederation: federate, Once: true})
			if err == nil {
				defer cs.Close()
				src = cs
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "explain: %v\n", err)
			return 1
		}
	} else {
		st, err := staticSource(fs, datacenter, trustDomain)
		if err != nil {
			fmt.Fprintf(stderr, "explain: %v\n", err)
			return 1
		}
		src = st
	}
	router := routing.New(src)
	router.SetGatewayService(gatewayService)
	rows := make([]routeRow, 0, len(names))
	for _, name := range names {
		rows = append(rows, routeOf(router, name))
	}
	if format == "text" {
		writeRouteTable(stdout, rows)
		return 0
	}
	enc := json.NewEncoder(stdout)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "explain: %v\n", err)
			return 1
		}
	}
	return 0
}

// routeOf asks r for the route of name, as a gateway would for a
// ClientHello with that SNI (lower-cased, as the gateway reads it).
func routeOf(r gateway.Router, name string) routeRow {
	row := routeRow{ServerName: name}
	route, err := r.Route(context.Background(), &sni.ClientHello{ServerName: strings.ToLower(name)})
	if err != nil {
		row.Rejected = gateway.ReasonNoRoute
		var rej *gateway.Rejection
		if errors.As(err, &rej) {
			row.Rejected = rej.Reason
		}
		row.Error = err.Error()
		return row
	}
	row.Kind, row.Route, row.Targets, row.Remote = route.Kind, route.Name, route.Targets, route.Remote
	row.ConnectTimeoutMS = route.ConnectTimeout.Milliseconds()
	row.Balance, row.Weights = balanceOf(route.Balance), route.Weights
	for name, l := range map[string]*int{"MaxConnections": route.Limits.MaxConnections,
		"MaxPendingRequests": route.Limits.MaxPendingRequests, "MaxConcurrentRequests": route.Limits.MaxConcurrentRequests} {
		if l != nil {
			if row.Limits == nil {
				row.Limits = map[string]int{}
			}
			row.Limits[name] = *l
		}
	}
	return row
}

// balanceOf names a route's policy: "round_robin", "least_request
// choice_count 3", or "in order" for a Router that sets none.
func balanceOf(b gateway.Balance) string {
	switch {
	case b.Policy == "":
		return "in order"
	case b.Policy == gateway.BalanceLeastRequest:
		return fmt.Sprintf("%s choice_count %d", b.Policy, max(b.ChoiceCount, 2))
	}
	return b.Policy
}

func writeRouteTable(w io.Writer, rows []routeRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER NAME\tKIND\tROUTE\tTARGETS\tBALANCE\tLIMITS\tREFUSED")
	for _, r := range rows {
		balance := r.Balance
		if len(r.Weights) > 0 {
			ws := make([]string, len(r.Weights))
			for i, w := range r.Weights {
				ws[i] = strconv.Itoa(w)
			}
			balance += " weights " + strings.Join(ws, ":")
		}
		var limits []string
		for _, name := range []string{"MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests"} {
			if n, ok := r.Limits[name]; ok {
				limits = append(limits, fmt.Sprintf("%s=%d", name, n))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ServerName, orDash(r.Kind), orDash(r.Route), orDash(strings.Join(r.Targets, ",")),
			orDash(balance), orDash(strings.Join(limits, ",")), orDash(r.Rejected))
	}
	tw.Flush()
}

// consulClient returns a client of the local agent and the function that
// closes the connections it holds, which the caller runs last: a run of
// explain leaves no connection open on the agent, so that explain can run
// in a loop (the agent refuses an address more than 200).
func consulClient() (*api.Client, func(), error) {
	cfg := api.DefaultConfig()
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	return client, func() {
		if cfg.Transport != nil {
			cfg.Transport.CloseIdleConnections()
		}
	}, nil
}
