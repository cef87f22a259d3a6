package consultest

import (
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A port taken between picking it and the agent binding it (any connection
// the machine opens may take one) costs a retry on other ports, not the
// test: here the first pick's server RPC port is held by a listener.
func TestStartMovesOffATakenPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	picks := 0
	pickPorts = func(tb testing.TB, n int) []int {
		picks++
		ports := freePorts(tb, n)
		if picks == 1 {
			ports[4] = taken.Addr().(*net.TCPAddr).Port // the server RPC port
		}
		return ports
	}
	defer func() { pickPorts = freePorts }()

	var logs strings.Builder
	a := Start(&logged{T: t, to: &logs}, Options{Datacenter: "dc1"})
	assert.Equal(t, 2, picks, "one retry on new ports")
	assert.Contains(t, logs.String(), "could not bind a port")
	leader, err := a.Client.Status().Leader()
	require.NoError(t, err)
	assert.NotEmpty(t, leader)
}

// logged is a *testing.T whose Logf also writes to a builder, for tests of
// what this package logs.
type logged struct {
	*testing.T
	to *strings.Builder
}

func (l *logged) Logf(format string, args ...any) {
	l.T.Helper()
	l.to.WriteString(format)
	l.T.Logf(format, args...)
}
