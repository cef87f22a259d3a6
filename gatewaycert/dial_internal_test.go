package gatewaycert

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An address is read as CONSUL_GRPC_ADDR is: https:// is TLS, http:// or
// no scheme plaintext; anything else is refused, naming it.
func TestDialTarget(t *testing.T) {
	for addr, want := range map[string]struct{ target, security string }{
		"https://127.0.0.1:8503": {"127.0.0.1:8503", "tls"},
		"HTTPS://[::1]:8503":     {"[::1]:8503", "tls"},
		"http://127.0.0.1:8502":  {"127.0.0.1:8502", "insecure"},
		"127.0.0.1:8502":         {"127.0.0.1:8502", "insecure"},
	} {
		target, creds, err := dialTarget(addr, nil)
		require.NoError(t, err, addr)
		assert.Equal(t, want.target, target, addr)
		assert.Equal(t, want.security, creds.Info().SecurityProtocol, addr)
	}
	for _, addr := range []string{"unix:///run/consul.sock", "https://127.0.0.1", "127.0.0.1", "grpc://h:1"} {
		_, _, err := dialTarget(addr, nil)
		assert.ErrorContains(t, err, `"`+addr+`"`, addr)
	}
}
