package accesslog_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/meshgate/meshgate/accesslog"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/testrig/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func record() *gateway.ConnRecord {
	return &gateway.ConnRecord{
		ConnInfo: gateway.ConnInfo{ID: 9, Remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000},
			Local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8443}},
		Start: time.Now(), Peek: 1500 * time.Microsecond, ServerName: "api.default.dc1.internal.x.consul",
		Route: "api", Kind: "service", Target: "127.0.0.1:21000", Outcome: gateway.OutcomeForwarded,
		Stats: gateway.Stats{ClientToUpstream: 517, UpstreamToClient: 4096, Duration: 2 * time.Second},
	}
}

// Each line is one JSON object with every field.
func TestJSONLines(t *testing.T) {
	var buf bytes.Buffer
	l := accesslog.New(slog.New(slog.NewJSONHandler(&buf, nil)))
	l.Closed(record())
	rej := record()
	rej.Outcome, rej.Target, rej.Stats, rej.Err = gateway.ReasonDialFailed, "", gateway.Stats{Duration: time.Millisecond}, errors.New("connection refused")
	l.Closed(rej)

	sc := bufio.NewScanner(&buf)
	var lines []map[string]any
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), sc.Text())
		lines = append(lines, m)
	}
	require.Len(t, lines, 2)
	first := lines[0]
	for k, want := range map[string]any{
		"msg": "connection", "id": 9.0, "client": "127.0.0.1:50000", "listener": "127.0.0.1:8443",
		"server_name": "api.default.dc1.internal.x.consul", "route": "api", "kind": "service", "target": "127.0.0.1:21000",
		"outcome": "forwarded", "client_to_upstream_bytes": 517.0, "upstream_to_client_bytes": 4096.0,
		"duration_ms": 2000.0, "hello_read_ms": 1.5,
	} {
		assert.Equal(t, want, first[k], k)
	}
	assert.Contains(t, first, "time")
	assert.NotContains(t, first, "error")
	assert.Equal(t, "dial-failed", lines[1]["outcome"])
	assert.Equal(t, "connection refused", lines[1]["error"])
}

// Through a real gateway: one line per connection, forwarded or not.
func TestOneLinePerConnection(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(io.Discard, c) }()
		}
	}()
	table, err := gateway.NewTable(map[string][]string{"*.example": {backend.Addr().String()}})
	require.NoError(t, err)
	var buf syncbuf.Buffer
	s := &gateway.Server{Router: table, Observer: accesslog.New(slog.New(slog.NewJSONHandler(&buf, nil)))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	defer s.Close()
	for _, msg := range []string{"not a TLS record at all", ""} {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		c.Write([]byte(msg))
		c.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for bytes.Count([]byte(buf.String()), []byte("\n")) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var outcomes []string
	for _, line := range bytes.Split(bytes.TrimSpace([]byte(buf.String())), []byte("\n")) {
		var m map[string]any
		require.NoError(t, json.Unmarshal(line, &m), string(line))
		outcomes = append(outcomes, m["outcome"].(string))
	}
	assert.ElementsMatch(t, []string{gateway.ReasonNotTLS, gateway.ReasonClosed}, outcomes)
}

// The cost of one line, JSON, per connection.
func BenchmarkJSONLine(b *testing.B) {
	l := accesslog.New(slog.New(slog.NewJSONHandler(io.Discard, nil)))
	r := record()
	b.ReportAllocs()
	for b.Loop() {
		l.Closed(r)
	}
}
