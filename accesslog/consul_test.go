package accesslog_test

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/accesslog"
	"github.com/meshgate/meshgate/gateway"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const apiSNI = "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

func envoyRecord(outcome string) *gateway.ConnRecord {
	r := &gateway.ConnRecord{
		ConnInfo: gateway.ConnInfo{ID: 7,
			Remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 50123},
			Local:  &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8443}},
		Start:      time.Date(2026, 3, 4, 5, 6, 7, 891_000_000, time.FixedZone("x", 3600)),
		ServerName: apiSNI, Route: "service api", Kind: "service", Outcome: outcome,
		Stats: gateway.Stats{Duration: 1500 * time.Millisecond},
	}
	if outcome == gateway.OutcomeForwarded {
		r.Target = "127.0.1.10:21000"
		r.Stats.ClientToUpstream, r.Stats.UpstreamToClient = 517, 4096
	}
	return r
}

// Consul's default JSON format, as Envoy writes it for a TCP connection:
// numbers typed, HTTP-only fields null, the start time in UTC.
func TestDefaultJSONFormat(t *testing.T) {
	var out bytes.Buffer
	e := &accesslog.Envoy{Stdout: &out}
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true}))
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	var line map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &line), out.String())
	assert.Len(t, line, 24, "Consul's default format has 24 fields")
	for k, want := range map[string]any{
		"start_time": "2026-03-04T04:06:07.891Z", "bytes_received": 517.0, "bytes_sent": 4096.0, "duration": 1500.0,
		"response_code": 0.0, "response_flags": "-", "upstream_host": "127.0.1.10:21000", "upstream_cluster": "service api",
		"downstream_remote_address": "127.0.0.9:50123", "downstream_local_address": "127.0.0.1:8443",
		"requested_server_name": apiSNI, "method": nil, "path": nil, "protocol": nil, "route_name": nil,
		"connection_termination_details": nil, "upstream_local_address": nil,
	} {
		assert.Equal(t, want, line[k], k)
	}
	assert.True(t, strings.HasSuffix(out.String(), "}\n"))
}

// Envoy's cluster names, when Cluster says them.
func TestClusterNames(t *testing.T) {
	var out bytes.Buffer
	e := &accesslog.Envoy{Stdout: &out, Cluster: func(r *gateway.ConnRecord) string { return r.ServerName }}
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true, TextFormat: "%UPSTREAM_CLUSTER%"}))
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	e.Closed(&gateway.ConnRecord{ServerName: "x", Outcome: "foreign-trust-domain"})
	assert.Equal(t, apiSNI+"\n-\n", out.String())
}

// Refusals get a line with Envoy's response flag for them.
func TestResponseFlags(t *testing.T) {
	var out bytes.Buffer
	e := &accesslog.Envoy{Stdout: &out}
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true, TextFormat: "%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %CONNECTION_TERMINATION_DETAILS% %UPSTREAM_HOST%"}))
	for _, o := range []string{gateway.ReasonDialFailed, gateway.ReasonOverLimit, "unknown-service", "foreign-trust-domain", gateway.ReasonNotTLS, gateway.OutcomeForwarded} {
		e.Closed(envoyRecord(o))
	}
	assert.Equal(t, "UF UpstreamConnectionFailure dial-failed -\n"+
		"UO UpstreamOverflow over-limit -\n"+
		"NC NoClusterFound unknown-service -\n"+
		"NC NoClusterFound foreign-trust-domain -\n"+
		"NC NoClusterFound not-tls -\n"+
		"- - - 127.0.1.10:21000\n", out.String())
}

// Connections closed before a filter chain (health checks, peek timeouts,
// oversized hellos) get no line, as in Envoy.
func TestNoLineBeforeFilterChain(t *testing.T) {
	var out bytes.Buffer
	e := &accesslog.Envoy{Stdout: &out}
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true, DisableListenerLogs: true}))
	for _, o := range []string{gateway.ReasonClosed, gateway.ReasonPeekTimeout, gateway.ReasonTooLarge} {
		e.Closed(envoyRecord(o))
	}
	assert.Empty(t, out.String())
}

// Text formats: operators with arguments and lengths, literals kept, "-"
// for what a TCP connection has not, a newline added.
func TestTextFormat(t *testing.T) {
	f, err := accesslog.ParseTextFormat(`[%START_TIME(%Y/%m/%d %H:%M:%E3S %z)%] %REQUESTED_SERVER_NAME:3% "%REQ(:METHOD)%" %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% %BYTES_RECEIVED% %CONNECTION_ID%`)
	require.NoError(t, err)
	assert.Equal(t, `[2026/03/04 04:06:07.891 +0000] api "-" 127.0.0.9 50123 517 7`+"\n", string(f.Line(envoyRecord(gateway.OutcomeForwarded))))
}

// JSON formats keep nested objects and constants; a value made of several
// operators is a string.
func TestJSONFormat(t *testing.T) {
	f, err := accesslog.ParseJSONFormat(`{"c": {"sni": "%REQUESTED_SERVER_NAME%", "port": "%DOWNSTREAM_LOCAL_PORT%"}, "both": "%BYTES_RECEIVED%/%BYTES_SENT%", "n": 3, "ua": "%REQ(USER-AGENT)% x"}`)
	require.NoError(t, err)
	assert.JSONEq(t, `{"c": {"sni": "`+apiSNI+`", "port": 8443}, "both": "517/4096", "n": 3, "ua": "- x"}`, string(f.Line(envoyRecord(gateway.OutcomeForwarded))))
}

// Consul's rules for AccessLogs (AccessLogsConfig.Validate), and command
// operators Envoy does not know, are errors naming the bad value.
func TestCheck(t *testing.T) {
	for cfg, want := range map[api.AccessLogsConfig]string{
		{Enabled: true, Type: "syslog"}:                          `Type "syslog"`,
		{Enabled: true, Type: api.FileLogSinkType}:               `needs a Path`,
		{Enabled: true, Path: "/tmp/x"}:                          `Path "/tmp/x" is only valid with Type "file"`,
		{Enabled: true, JSONFormat: `{}`, TextFormat: "x"}:       `both JSONFormat and TextFormat`,
		{Enabled: true, JSONFormat: `{"a": `}:                    `JSON format`,
		{Enabled: true, JSONFormat: `["%DURATION%"]`}:            `want an object`,
		{Enabled: true, TextFormat: "%DURATON%"}:                 `unknown command operator %DURATON%`,
		{Enabled: true, TextFormat: "%DURATION"}:                 `unterminated`,
		{Enabled: true, TextFormat: "%START_TIME(%Q)%"}:          `unsupported specifier %Q`,
		{Enabled: true, TextFormat: "%REQUESTED_SERVER_NAME:x%"}: `bad length "x"`,
	} {
		err := accesslog.Check(&cfg)
		if assert.Error(t, err, "%+v", cfg) {
			assert.Contains(t, err.Error(), want)
		}
	}
	require.NoError(t, accesslog.Check(&api.AccessLogsConfig{Enabled: true, Type: api.StdErrLogSinkType}))
}

// Apply switches the log on, over to a file, and off while connections
// come; a configuration it cannot apply leaves the one in force.
func TestApplyLive(t *testing.T) {
	var stdout, stderr bytes.Buffer
	e := &accesslog.Envoy{Stdout: &stdout, Stderr: &stderr}
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	assert.Empty(t, stdout.String(), "off until applied")

	text := &api.AccessLogsConfig{Enabled: true, TextFormat: "%UPSTREAM_HOST%"}
	require.NoError(t, e.Apply(text))
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	assert.Equal(t, "127.0.1.10:21000\n", stdout.String())

	err := e.Apply(&api.AccessLogsConfig{Enabled: true, TextFormat: "%NOPE%"})
	require.ErrorContains(t, err, "%NOPE%")
	assert.Equal(t, *text, e.InForce(), "the one in force stays")
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	assert.Equal(t, "127.0.1.10:21000\n127.0.1.10:21000\n", stdout.String())

	path := filepath.Join(t.TempDir(), "access.log")
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true, Type: api.FileLogSinkType, Path: path, TextFormat: "%RESPONSE_FLAGS%"}))
	e.Closed(envoyRecord(gateway.ReasonDialFailed))
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true, Type: api.StdErrLogSinkType, TextFormat: "%RESPONSE_FLAGS%"}))
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: false, TextFormat: "%RESPONSE_FLAGS%"}))
	e.Closed(envoyRecord(gateway.OutcomeForwarded))

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "UF\n", string(b))
	assert.Equal(t, "-\n", stderr.String())
	assert.Equal(t, "127.0.1.10:21000\n127.0.1.10:21000\n", stdout.String(), "nothing more once moved")
	assert.False(t, e.InForce().Enabled)

	bad := filepath.Join(t.TempDir(), "missing", "dir", "access.log")
	require.ErrorContains(t, e.Apply(&api.AccessLogsConfig{Enabled: true, Type: api.FileLogSinkType, Path: bad}), "missing")
}

// A configuration the agent merged from a registration and proxy-defaults
// is applied as Consul hands it to Envoy, unvalidated: a Path without Type
// "file" is ignored (stdout), and JSONFormat wins over TextFormat.
func TestApplyMerged(t *testing.T) {
	var stdout bytes.Buffer
	e := &accesslog.Envoy{Stdout: &stdout}
	require.NoError(t, e.Apply(&api.AccessLogsConfig{Enabled: true, Path: "/nonexistent/x", TextFormat: "%UPSTREAM_HOST%", JSONFormat: `{"host": "%UPSTREAM_HOST%"}`}))
	e.Closed(envoyRecord(gateway.OutcomeForwarded))
	assert.JSONEq(t, `{"host": "127.0.1.10:21000"}`, stdout.String())
}
