package l7

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The policy Consul's getRetryPolicyForDestination builds.
func TestRetryPolicyOf(t *testing.T) {
	p, err := retryPolicyOf(nil)
	require.NoError(t, err)
	assert.False(t, p.active())
	p, err = retryPolicyOf(&api.ServiceRouteDestination{NumRetries: 2})
	require.NoError(t, err)
	assert.False(t, p.active(), "NumRetries alone: Envoy's empty retry_on retries nothing")
	p, err = retryPolicyOf(&api.ServiceRouteDestination{RetryOnConnectFailure: true})
	require.NoError(t, err)
	assert.Equal(t, "1 on connect-failure", p.String(), "Envoy's default of one retry")
	p, err = retryPolicyOf(&api.ServiceRouteDestination{NumRetries: 2, RetryOnStatusCodes: []uint32{503}, RetryOn: []string{"connect-failure", "unavailable"}})
	require.NoError(t, err)
	assert.Equal(t, "2 on connect-failure,retriable-status-codes,unavailable [503]", p.String())
	_, err = retryPolicyOf(&api.ServiceRouteDestination{RetryOn: []string{"sometimes"}})
	assert.EqualError(t, err, `l7: RetryOn "sometimes" is not a retry condition Consul accepts`)
}

func TestRetryDecisions(t *testing.T) {
	resp := func(code int, header ...string) *http.Response {
		h := http.Header{}
		for i := 0; i+1 < len(header); i += 2 {
			h.Set(header[i], header[i+1])
		}
		return &http.Response{StatusCode: code, Header: h}
	}
	policy := func(on ...string) retryPolicy {
		p, err := retryPolicyOf(&api.ServiceRouteDestination{RetryOn: on})
		require.NoError(t, err)
		return p
	}
	codes, err := retryPolicyOf(&api.ServiceRouteDestination{RetryOnStatusCodes: []uint32{503, 429}})
	require.NoError(t, err)
	for _, tc := range []struct {
		p    retryPolicy
		resp *http.Response
		f    failure
		want bool
	}{
		{policy("5xx"), resp(500), 0, true},
		{policy("5xx"), resp(404), 0, false},
		{policy("5xx"), nil, resetFailure, true},
		{policy("5xx"), nil, connectFailure, true},
		{policy("gateway-error"), resp(500), 0, false},
		{policy("gateway-error"), resp(504), 0, true},
		{policy("reset"), resp(503), 0, false},
		{policy("reset"), nil, resetFailure, true},
		{policy("connect-failure"), nil, resetFailure, false},
		{policy("connect-failure"), nil, connectFailure, true},
		{policy("retriable-4xx"), resp(409), 0, true},
		{policy("retriable-4xx"), resp(403), 0, false},
		{policy("refused-stream"), nil, refusedStream, true},
		{policy("refused-stream"), nil, resetFailure, false},
		{policy("envoy-ratelimited"), resp(429, "X-Envoy-Ratelimited", "true"), 0, true},
		{policy("envoy-ratelimited"), resp(429), 0, false},
		{policy("unavailable"), resp(200, "Grpc-Status", "14"), 0, true},
		{policy("unavailable"), resp(200, "Grpc-Status", "13"), 0, false},
		{policy("internal", "cancelled"), resp(200, "Grpc-Status", "13"), 0, true},
		{codes, resp(429), 0, true},
		{codes, resp(500), 0, false},
		{codes, nil, connectFailure, false},
	} {
		got := false
		if tc.resp != nil {
			got = tc.p.retryResponse(tc.resp)
		} else {
			got = tc.p.retryFailure(tc.f)
		}
		code := 0
		if tc.resp != nil {
			code = tc.resp.StatusCode
		}
		assert.Equal(t, tc.want, got, "%s, answer %d %v, failure %d", tc.p, code, tc.resp, tc.f)
	}
}

// Envoy's back-off: below 25 ms, then 75, 175, then capped at 250.
func TestRetryBackoff(t *testing.T) {
	for n, limit := range map[int]time.Duration{1: 25 * time.Millisecond, 2: 75 * time.Millisecond, 3: 175 * time.Millisecond, 4: 250 * time.Millisecond, 40: 250 * time.Millisecond} {
		for range 200 {
			d := retryBackoff(n)
			assert.GreaterOrEqual(t, d, time.Duration(0))
			assert.Less(t, d, limit, "retry %d", n)
		}
	}
}

// A body read in part by one attempt is whole for the next; an old
// attempt's reader fails once a new one starts; past the bound nothing is
// kept and the body cannot be sent again, while the attempt that streams
// it still gets every byte.
func TestReplayBody(t *testing.T) {
	eof := 0
	r := newReplayBody(io.NopCloser(strings.NewReader("hello, world")), 64, func() { eof++ })
	first := r.attempt()
	buf := make([]byte, 5)
	n, err := first.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(buf[:n]))
	second := r.attempt()
	_, err = first.Read(buf)
	assert.ErrorIs(t, err, errReplay, "the old attempt's transport gets nothing more")
	all, err := io.ReadAll(second)
	require.NoError(t, err)
	assert.Equal(t, "hello, world", string(all))
	assert.Equal(t, 1, eof, "the end of the body is seen once")
	assert.True(t, r.replayable())
	all, err = io.ReadAll(r.attempt())
	require.NoError(t, err)
	assert.Equal(t, "hello, world", string(all), "and again")

	big := bytes.Repeat([]byte("x"), 100)
	r = newReplayBody(io.NopCloser(bytes.NewReader(big)), 64, nil)
	all, err = io.ReadAll(r.attempt())
	require.NoError(t, err)
	assert.Equal(t, big, all, "the streaming attempt gets it all")
	assert.False(t, r.replayable(), "past 64 bytes")
	_, err = io.ReadAll(r.attempt())
	assert.ErrorIs(t, err, errReplay)
}
