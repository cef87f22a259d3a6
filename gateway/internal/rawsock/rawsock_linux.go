package rawsock

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DialError is the error net.Dial would give for a dial of target that
// failed in op.
func DialError(target netip.AddrPort, op string, err error) error {
	if errno, ok := err.(unix.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(target), Err: err}
}

// NetConn turns a raw socket into a net.Conn (which takes its own
// descriptor) and closes fd.
func NetConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	f.Close()
	return nc, err
}

// SetKeepAlive turns on TCP keepalive on fd as net.TCPConn.SetKeepAliveConfig
// does, with its defaults (15 s, 15 s, 9 probes).
func SetKeepAlive(fd int, ka net.KeepAliveConfig) {
	secs := func(d time.Duration) int {
		if d == 0 {
			d = 15 * time.Second
		}
		return max(1, int((d+time.Second-1)/time.Second))
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	if ka.Idle >= 0 {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(ka.Idle))
	}
	if ka.Interval >= 0 {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(ka.Interval))
	}
	if ka.Count >= 0 {
		count := ka.Count
		if count == 0 {
			count = 9
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, count)
	}
}

// AddrPortOf converts a socket address to an address and port, an IPv4
// address in IPv6 unmapped.
func AddrPortOf(sa syscall.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// TCPAddrOf converts a socket address to a *net.TCPAddr.
func TCPAddrOf(sa syscall.Sockaddr) *net.TCPAddr { return net.TCPAddrFromAddrPort(AddrPortOf(sa)) }

// AllAddrPorts reports whether every target is ip:port, which a raw-socket
// engine dials itself (any other target goes through the Server's dialer).
func AllAddrPorts(targets []string) bool {
	for _, t := range targets {
		if _, err := netip.ParseAddrPort(t); err != nil {
			return false
		}
	}
	return true
}
