package engine

import (
	"github.com/meshgate/meshgate/gateway/internal/freelist"
	"github.com/meshgate/meshgate/sni"
)

// The buffers ClientHellos are read into and the hellos they are parsed
// into, shared by the engines. As many are kept as connections read their
// hellos at once in a steady load; a burst's extra ones are left to the
// collector.
var (
	helloBuffers = freelist.New(128, func() *[]byte { b := make([]byte, 0, 4096); return &b })
	helloPool    = freelist.New(128, func() *sni.ClientHello { return new(sni.ClientHello) })
)

// GetHello returns a buffer to read a ClientHello into and a hello to
// parse it into, for PutHello to take back.
func GetHello() (*[]byte, *sni.ClientHello) { return helloBuffers.Get(), helloPool.Get() }

// PutHello takes back what GetHello gave, once the connection no longer
// needs them: raw is what was read into *bp (which may have been grown);
// a buffer grown past 64 KiB is left to the collector.
func PutHello(bp *[]byte, raw []byte, hello *sni.ClientHello) {
	if cap(raw) <= 64<<10 {
		*bp = raw[:0]
		helloBuffers.Put(bp)
	}
	helloPool.Put(hello)
}
