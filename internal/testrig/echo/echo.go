// Package echo serves connections that send back every byte they receive:
// the backend of meshgateway's demo and of the tests.
package echo

import (
	"io"
	"net"
)

// Serve accepts connections on l until it is closed. Each connection gets
// back every byte it sends; once the client half-closes, Serve half-closes
// its side too (where the connection can), then closes it. accepted, if not
// nil, is called for each connection as it is accepted, before any byte is
// read.
func Serve(l net.Listener, accepted func()) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if accepted != nil {
			accepted()
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}()
	}
}
