package registration

import (
	"fmt"
	"net"
	"strconv"
)

// Advertise returns the Gateway.Address to register for a gateway that
// listens on listen ("host:port", as net.Listener.Addr gives it) when the
// operator gave address (-address: "", "host", ":port" or "host:port"), as
// "consul connect envoy -register" advertises:
//   - no host: the listener's host, unless that is a wildcard (0.0.0.0,
//     ::) or empty, which nobody can dial; then no host at all, so that the
//     catalog gives the node's address and the check dials 127.0.0.1;
//   - no port: the listener's port.
//
// A wildcard host in address counts as none. (Consul's command takes port
// 8443 when -address has none, where Envoy listens by default; meshgate's
// default listener is on 8443 too, and one on another port is advertised
// there.)
func Advertise(listen, address string) (string, error) {
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("registration: listener address %q: %w", listen, err)
	}
	host, port, err := splitAddress(address)
	if err != nil {
		return "", err
	}
	if host == "" && !wildcard(lhost) {
		host = lhost
	}
	if wildcard(host) {
		host = ""
	}
	if port == "" {
		port = lport
	}
	return net.JoinHostPort(host, port), nil
}

// ListenAddress returns where a gateway listens when only its advertised
// address (-address) is given: there, as Consul's Envoy binds its
// registration's address, if host is an address of this machine's
// interfaces (or a wildcard); port defaults to 8443. It is an error
// otherwise, as Consul's command refuses an address it cannot bind: the
// operator says where to listen (-listen, or -bind-address).
func ListenAddress(address string) (string, error) {
	host, port, err := splitAddress(address)
	if err != nil {
		return "", err
	}
	if port == "" {
		port = "8443"
	}
	if !wildcard(host) && !local(host) {
		return "", fmt.Errorf("registration: the LAN address %q is not an address of this host, so the gateway cannot listen there: say where it listens (-listen or -bind-address)", host)
	}
	return net.JoinHostPort(host, port), nil
}

// splitAddress splits an -address value: "", "host", ":port" or
// "host:port"; a host without a port must be an IP address, as Consul's
// command requires.
func splitAddress(address string) (host, port string, err error) {
	if address == "" {
		return "", "", nil
	}
	host, port, err = net.SplitHostPort(address)
	if err != nil {
		ip := net.ParseIP(address)
		if ip == nil {
			return "", "", fmt.Errorf("registration: address %q: want an IP address, :port or host:port", address)
		}
		return ip.String(), "", nil
	}
	if port != "" {
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return "", "", fmt.Errorf("registration: address %q: port %q out of range", address, port)
		}
	}
	return host, port, nil
}

// wildcard reports whether host means every interface.
func wildcard(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// local reports whether host is an IP address of one of this machine's
// interfaces (Consul's canBind).
func local(host string) bool {
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}
