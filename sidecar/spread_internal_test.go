package sidecar

import (
	"net"
	"testing"

	"github.com/meshgate/meshgate/resolve"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An address that fails to connect is ejected, as the gateway's outlier
// ejection does: tried after the others from then on, the others keeping
// their turn, until a dial (or a probe) connects to it.
func TestDialerEjectsAnAddressThatFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close()
	d := &Dialer{}
	defer d.Close()
	target := resolve.Target{Route: resolve.PathDirect, SNI: "api", Dial: []string{dead, "127.0.0.1:2", "127.0.0.1:3"}}
	assert.Equal(t, []string{dead, "127.0.0.1:2", "127.0.0.1:3"}, d.order(target), "round robin starts at the first")
	_, err = d.dialOne(t.Context(), dead, nil, DefaultConnectTimeout)
	require.Error(t, err)
	firsts := map[string]int{}
	for range 100 {
		order := d.order(target)
		assert.Equal(t, dead, order[2], "the ejected address last")
		firsts[order[0]]++
	}
	assert.Equal(t, map[string]int{"127.0.0.1:2": 50, "127.0.0.1:3": 50}, firsts)
	a, b := net.Pipe()
	defer b.Close()
	c := d.connected(dead, a)
	assert.EqualValues(t, 1, d.spreadState().openOn(dead).Load(), "counted open for least_request")
	c.Close()
	c.Close()
	assert.EqualValues(t, 0, d.spreadState().openOn(dead).Load(), "once, at close")
	var firstAgain bool
	for range 3 {
		firstAgain = firstAgain || d.order(target)[0] == dead
	}
	assert.True(t, firstAgain, "readmitted by a dial that connects: first in its turn again")
}
