//go:build !linux

package consultest

import (
	"errors"
	"net/netip"
)

// DialedTCP reads Linux's /proc tables; elsewhere it returns an error.
func (a *Agent) DialedTCP() ([]netip.AddrPort, error) {
	return nil, errors.New("consultest: DialedTCP reads /proc, which only Linux has")
}

// OpenHTTPConns reads Linux's /proc tables; elsewhere it returns an error.
func (a *Agent) OpenHTTPConns() (int, error) {
	return 0, errors.New("consultest: OpenHTTPConns reads /proc, which only Linux has")
}
