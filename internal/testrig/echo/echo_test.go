package echo

import (
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each connection gets its bytes back and, after its half-close, an EOF;
// accepted counts each connection.
func TestServeEchoesAndHalfCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var n atomic.Int64
	go Serve(ln, func() { n.Add(1) })
	for i := range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		msg := []byte{'a' + byte(i), 'b', 'c'}
		_, err = c.Write(msg)
		require.NoError(t, err)
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		assert.Equal(t, msg, got)
		c.Close()
	}
	assert.Equal(t, int64(3), n.Load())
}
