package consultest

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The connections a process dialled, read from /proc, are exactly those it
// opened: here one to a listener of its own, whose accepted end (inbound,
// on a listening port) is left out, as is a connection it never made.
func TestDialedTCPSeesWhatTheProcessDialled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	accepted, err := ln.Accept()
	require.NoError(t, err)
	defer accepted.Close()

	got, err := dialedTCP(os.Getpid())
	require.NoError(t, err)
	target := netip.MustParseAddrPort(ln.Addr().String())
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	assert.Contains(t, got, target, "the dialled connection")
	assert.NotContains(t, got, client, "the accepted end is inbound")

	six, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Logf("NOTE: no IPv6 loopback here (%v): the tcp6 table is not checked", err)
		return
	}
	defer six.Close()
	c6, err := net.Dial("tcp", six.Addr().String())
	require.NoError(t, err)
	defer c6.Close()
	got, err = dialedTCP(os.Getpid())
	require.NoError(t, err)
	assert.Contains(t, got, netip.MustParseAddrPort(six.Addr().String()), "IPv6 words are in the kernel's order too")
}
