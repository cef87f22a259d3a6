package consultest

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DialedTCP returns the remote addresses of the established TCP
// connections the agent's process opened itself: those whose local port is
// not one the process listens on. Tests use it to show which addresses an
// agent reached (for WAN federation through mesh gateways: its own
// gateways, never another datacenter's server). It reads the kernel's
// tables in /proc, so it sees every connection, whichever code opened it.
func (a *Agent) DialedTCP() ([]netip.AddrPort, error) {
	if a.cmd == nil || a.cmd.Process == nil {
		return nil, fmt.Errorf("consultest: agent %s is not running", a.Datacenter)
	}
	return dialedTCP(a.cmd.Process.Pid)
}

// dialedTCP is DialedTCP for the process pid.
func dialedTCP(pid int) ([]netip.AddrPort, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return nil, err
	}
	var socks []tcpSocket
	for _, table := range []string{"tcp", "tcp6"} {
		s, err := readTCPTable(filepath.Join("/proc", strconv.Itoa(pid), "net", table))
		if err != nil {
			return nil, err
		}
		socks = append(socks, s...)
	}
	listening := map[uint16]bool{}
	for _, s := range socks {
		if inodes[s.inode] && s.state == tcpListen {
			listening[s.local.Port()] = true
		}
	}
	var out []netip.AddrPort
	for _, s := range socks {
		if inodes[s.inode] && s.state == tcpEstablished && !listening[s.local.Port()] {
			out = append(out, s.remote)
		}
	}
	return out, nil
}

// States of /proc/net/tcp (include/net/tcp_states.h).
const (
	tcpEstablished = 0x01
	tcpListen      = 0x0A
)

type tcpSocket struct {
	local, remote netip.AddrPort
	state         int
	inode         string
}

// socketInodes returns the inodes of the sockets pid has open.
func socketInodes(pid int) (map[string]bool, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			out[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return out, nil
}

// readTCPTable parses /proc/<pid>/net/tcp or tcp6.
func readTCPTable(path string) ([]tcpSocket, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []tcpSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		local, err1 := procAddr(fields[1])
		remote, err2 := procAddr(fields[2])
		state, err3 := strconv.ParseInt(fields[3], 16, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("consultest: %s: cannot parse %q", path, sc.Text())
		}
		out = append(out, tcpSocket{local: local, remote: remote, state: int(state), inode: fields[9]})
	}
	return out, sc.Err()
}

// procAddr parses an address of /proc/net/tcp: the IP in hex, in the
// kernel's byte order for each 32-bit word, a colon, the port in hex.
func procAddr(s string) (netip.AddrPort, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("no port in %q", s)
	}
	raw, err := hex.DecodeString(ipHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each word is little-endian
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// OpenHTTPConns returns how many connections to the agent's HTTP port the
// agent's process holds open (in any state but listening: one the client
// closed counts until the agent closes its end too, as the agent's limit
// of connections per client address counts it).
func (a *Agent) OpenHTTPConns() (int, error) {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0, fmt.Errorf("consultest: agent %s is not running", a.Datacenter)
	}
	addr, err := netip.ParseAddrPort(cmpOr(a.HTTPAddr, a.HTTPSAddr))
	if err != nil {
		return 0, fmt.Errorf("consultest: the agent's HTTP address: %w", err)
	}
	return openConnsOn(a.cmd.Process.Pid, addr.Port())
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func openConnsOn(pid int, port uint16) (int, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, table := range []string{"tcp", "tcp6"} {
		socks, err := readTCPTable(filepath.Join("/proc", strconv.Itoa(pid), "net", table))
		if err != nil {
			return 0, err
		}
		for _, s := range socks {
			if inodes[s.inode] && s.state != tcpListen && s.local.Port() == port {
				n++
			}
		}
	}
	return n, nil
}
