package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/meshgate/meshgate/mesh"
)

// refuseSelfRoutes returns an error naming the first address in the view
// that this gateway would forward to and that is its own listener, by
// address or through a name: such a route would loop. The local
// datacenter's own gateways are left out: they are never a route's target.
func refuseSelfRoutes(ctx context.Context, listen net.Addr, v *mesh.View) error {
	self, ok := listen.(*net.TCPAddr)
	if !ok {
		return nil
	}
	local := map[netip.Addr]bool{}
	if self.IP.IsUnspecified() {
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					local[ip.Unmap()] = true
				}
			}
		}
	}
	isSelf := func(ip netip.Addr) bool {
		ip = ip.Unmap()
		if self.IP.IsUnspecified() {
			return ip.IsLoopback() || ip.IsUnspecified() || local[ip]
		}
		want, _ := netip.AddrFromSlice(self.IP)
		return ip == want.Unmap()
	}
	for _, where := range targetsOf(v) {
		host, port, err := net.SplitHostPort(where.addr)
		if err != nil || port != strconv.Itoa(self.Port) {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ips, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
		cancel()
		if err != nil {
			continue // it cannot be dialled either; the gateway logs that when it tries
		}
		for _, ip := range ips {
			if isSelf(ip) {
				return fmt.Errorf("%s %s is this gateway's own listener (%s): it would forward to itself", where.what, where.addr, self)
			}
		}
	}
	return nil
}

type target struct{ what, addr string }

// targetsOf lists every address a route of v can dial, sorted for a stable
// error message.
func targetsOf(v *mesh.View) []target {
	var out []target
	add := func(what string, eps []mesh.Endpoint) {
		for _, e := range eps {
			for _, a := range []string{e.Address, e.WAN} {
				if a != "" {
					out = append(out, target{what, a})
				}
			}
		}
	}
	for k, eps := range v.Services {
		add("service "+k.Name+" in "+k.Datacenter+" at", eps)
	}
	for l, eps := range v.Gateways {
		if l.Datacenter != v.Datacenter || l.Partition != v.Partition {
			add("the mesh gateway of "+l.Datacenter+" at", eps)
		}
	}
	for name, p := range v.Peers {
		for _, a := range p.Gateways {
			out = append(out, target{"peer " + name + "'s gateway", a})
		}
		for _, a := range p.ServerAddresses {
			out = append(out, target{"peer " + name + "'s server", a})
		}
	}
	for _, a := range v.Servers {
		out = append(out, target{"the Consul server", a})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].what+out[i].addr < out[j].what+out[j].addr })
	return out
}
