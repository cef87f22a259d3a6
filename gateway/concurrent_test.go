package gateway

import (
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Short TLS connections from several clients at once, each a handshake
// with the backend through the gateway, 512 bytes echoed and a close, are
// every one carried whole: no engine ends one early. (The io_uring loops
// once half-closed about 1 % of them: a shutdown the kernel ran late, on a
// descriptor number a new connection had taken.)
func TestConcurrentShortConnectionsAreAllCarried(t *testing.T) {
	cert, pool := selfSigned(t, longName)
	b := startBackend(t, tlsEcho(cert))
	records := &recorder{}
	counters := &records.Counters
	gw := startGateway(t, &Server{Router: tableFor(t, map[string][]string{longName: {b.addr()}}), Observer: records})
	const clients, each = 8, 150
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, got := make([]byte, 512), make([]byte, 512)
			for j := range each {
				err := func() error {
					c, err := tls.Dial("tcp", gw, &tls.Config{ServerName: longName, RootCAs: pool})
					if err != nil {
						return fmt.Errorf("handshake: %w", err)
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(time.Minute))
					rand.Read(msg)
					if _, err := c.Write(msg); err != nil {
						return fmt.Errorf("write: %w", err)
					}
					if _, err := io.ReadFull(c, got); err != nil {
						return fmt.Errorf("echo: %w", err)
					}
					if string(got) != string(msg) {
						return fmt.Errorf("echo: other bytes")
					}
					return nil
				}()
				if err != nil {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("client %d, connection %d: %v", i, j, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	require.Empty(t, failed, "%d of %d connections failed", len(failed), clients*each)
	waitFor(t, "every connection to be reported", func() bool { return counters.Snapshot().Forwarded == clients*each })
	assert.Zero(t, counters.Snapshot().DialFailures)
}
