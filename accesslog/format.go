package accesslog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshgate/meshgate/gateway"
)

// A Format turns a connection's record into one line the way Envoy's
// access log formatter does for a TCP proxy: a text format string or a
// JSON format dictionary whose values hold Envoy's command operators
// (%START_TIME%, %BYTES_RECEIVED%, %UPSTREAM_HOST%, ...). Operators that
// mean something for an HTTP request only (%REQ(...)%, %RESPONSE_CODE%,
// %PROTOCOL%, ...) are empty, as Envoy leaves them for a TCP connection:
// "-" in text, null (or 0 for %RESPONSE_CODE%) where a JSON value is that
// operator alone. A Format is safe for concurrent use.
type Format struct {
	text []piece  // text format, or nil
	json *jsonVal // JSON format, or nil
}

// DefaultJSONFormat is the format Consul gives Envoy when AccessLogs sets
// neither JSONFormat nor TextFormat (agent/xds/accesslogs).
const DefaultJSONFormat = `{
  "start_time": "%START_TIME%",
  "route_name": "%ROUTE_NAME%",
  "method": "%REQ(:METHOD)%",
  "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
  "protocol": "%PROTOCOL%",
  "response_code": "%RESPONSE_CODE%",
  "response_flags": "%RESPONSE_FLAGS%",
  "response_code_details": "%RESPONSE_CODE_DETAILS%",
  "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
  "bytes_received": "%BYTES_RECEIVED%",
  "bytes_sent": "%BYTES_SENT%",
  "duration": "%DURATION%",
  "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
  "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
  "user_agent": "%REQ(USER-AGENT)%",
  "request_id": "%REQ(X-REQUEST-ID)%",
  "authority": "%REQ(:AUTHORITY)%",
  "upstream_host": "%UPSTREAM_HOST%",
  "upstream_cluster": "%UPSTREAM_CLUSTER%",
  "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
  "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
  "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
  "requested_server_name": "%REQUESTED_SERVER_NAME%",
  "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
}`

// ParseTextFormat parses an Envoy text format string. A newline is added
// at the end when it has none, as Consul does.
func ParseTextFormat(format string) (*Format, error) {
	if !strings.HasSuffix(format, "\n") {
		format += "\n"
	}
	pieces, err := parsePieces(format)
	if err != nil {
		return nil, err
	}
	return &Format{text: pieces}, nil
}

// ParseJSONFormat parses an Envoy JSON format dictionary: a JSON object
// whose string values may hold command operators, nested objects allowed.
func ParseJSONFormat(format string) (*Format, error) {
	dec := json.NewDecoder(strings.NewReader(format))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("accesslog: JSON format: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("accesslog: JSON format: want an object, got %s", strings.TrimSpace(format))
	}
	jv, err := compileJSON(v)
	if err != nil {
		return nil, err
	}
	return &Format{json: jv}, nil
}

// Line returns r's line, newline included.
func (f *Format) Line(r *gateway.ConnRecord) []byte {
	var b bytes.Buffer
	if f.text != nil {
		for _, p := range f.text {
			if p.op == nil {
				b.WriteString(p.lit)
				continue
			}
			v := p.op.value(r)
			if v == nil {
				b.WriteString("-")
			} else {
				b.WriteString(truncate(fmt.Sprint(v), p.op.max))
			}
		}
		return b.Bytes()
	}
	out, err := json.Marshal(f.json.eval(r))
	if err != nil { // not reached: values are strings, numbers and nil
		out = []byte(`{}`)
	}
	b.Write(out)
	b.WriteByte('\n')
	return b.Bytes()
}

// piece is a literal or one command operator.
type piece struct {
	lit string
	op  *operator
}

// jsonVal is a compiled JSON format value: an object, a string of pieces
// (one operator alone keeps its type), or a constant.
type jsonVal struct {
	object map[string]*jsonVal
	pieces []piece
	konst  any
}

func compileJSON(v any) (*jsonVal, error) {
	switch t := v.(type) {
	case map[string]any:
		obj := make(map[string]*jsonVal, len(t))
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			c, err := compileJSON(t[k])
			if err != nil {
				return nil, fmt.Errorf("%w (key %q)", err, k)
			}
			obj[k] = c
		}
		return &jsonVal{object: obj}, nil
	case string:
		pieces, err := parsePieces(t)
		if err != nil {
			return nil, err
		}
		return &jsonVal{pieces: pieces}, nil
	case []any:
		return nil, errors.New("accesslog: JSON format: lists are not allowed in a format dictionary")
	}
	return &jsonVal{konst: v}, nil
}

func (j *jsonVal) eval(r *gateway.ConnRecord) any {
	switch {
	case j.object != nil:
		out := make(map[string]any, len(j.object))
		for k, v := range j.object {
			out[k] = v.eval(r)
		}
		return out
	case j.pieces == nil:
		return j.konst
	case len(j.pieces) == 1 && j.pieces[0].op != nil:
		op := j.pieces[0].op
		v := op.value(r)
		if s, ok := v.(string); ok {
			return truncate(s, op.max)
		}
		return v
	}
	var b strings.Builder
	for _, p := range j.pieces {
		if p.op == nil {
			b.WriteString(p.lit)
		} else if v := p.op.value(r); v == nil {
			b.WriteString("-")
		} else {
			b.WriteString(truncate(fmt.Sprint(v), p.op.max))
		}
	}
	return b.String()
}

func truncate(s string, max int) string {
	if max > 0 && len(s) > max {
		return s[:max]
	}
	return s
}

// parsePieces splits s into literals and %OPERATOR[(ARG)][:MAX]% pieces.
func parsePieces(s string) ([]piece, error) {
	var out []piece
	for s != "" {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			out = append(out, piece{lit: s})
			break
		}
		if i > 0 {
			out = append(out, piece{lit: s[:i]})
		}
		s = s[i+1:]
		j := strings.IndexFunc(s, func(c rune) bool { return !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') })
		if j < 0 {
			return nil, fmt.Errorf("accesslog: unterminated command operator %%%s", s)
		}
		name, rest := s[:j], s[j:]
		arg := ""
		if rest[0] == '(' {
			k := strings.IndexByte(rest, ')')
			if k < 0 {
				return nil, fmt.Errorf("accesslog: command operator %%%s: no closing parenthesis", name)
			}
			arg, rest = rest[1:k], rest[k+1:]
		}
		max := 0
		if strings.HasPrefix(rest, ":") {
			k := strings.IndexByte(rest, '%')
			if k < 0 {
				return nil, fmt.Errorf("accesslog: unterminated command operator %%%s", name)
			}
			n, err := strconv.Atoi(rest[1:k])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("accesslog: command operator %%%s: bad length %q", name, rest[1:k])
			}
			max, rest = n, rest[k:]
		}
		if !strings.HasPrefix(rest, "%") {
			return nil, fmt.Errorf("accesslog: unterminated command operator %%%s", name)
		}
		op, err := newOperator(name, arg, max)
		if err != nil {
			return nil, err
		}
		out = append(out, piece{op: op})
		s = rest[1:]
	}
	return out, nil
}

// operator is one command operator; value returns a string, an int64, or
// nil when it has no value for this connection.
type operator struct {
	max   int
	value func(r *gateway.ConnRecord) any
}

// emptyOnTCP are Envoy's command operators that have a value for HTTP
// requests only, for TLS the gateway does not terminate, or for what
// meshgate's connection record does not hold (the upstream socket's local
// address): empty on meshgate's connections.
var emptyOnTCP = map[string]bool{
	"REQ": true, "RESP": true, "TRAILER": true, "REQUEST_HEADER": true, "RESPONSE_HEADER": true, "RESPONSE_TRAILER": true,
	"PROTOCOL": true, "UPSTREAM_PROTOCOL": true, "RESPONSE_CODE_DETAILS": true, "ROUTE_NAME": true,
	"REQUEST_DURATION": true, "REQUEST_TX_DURATION": true, "RESPONSE_DURATION": true, "RESPONSE_TX_DURATION": true,
	"UPSTREAM_REQUEST_ATTEMPT_COUNT": true, "GRPC_STATUS": true, "GRPC_STATUS_NUMBER": true, "STREAM_ID": true,
	"REQUEST_HEADERS_BYTES": true, "RESPONSE_HEADERS_BYTES": true, "RESPONSE_TRAILERS_BYTES": true,
	"UPSTREAM_HEADER_BYTES_SENT": true, "UPSTREAM_HEADER_BYTES_RECEIVED": true,
	"DOWNSTREAM_HEADER_BYTES_SENT": true, "DOWNSTREAM_HEADER_BYTES_RECEIVED": true,
	"DYNAMIC_METADATA": true, "CLUSTER_METADATA": true, "UPSTREAM_METADATA": true, "METADATA": true,
	"FILTER_STATE": true, "UPSTREAM_FILTER_STATE": true, "CEL": true, "TYPED_CEL": true, "VIRTUAL_CLUSTER_NAME": true,
	"LOCAL_REPLY_BODY": true, "ACCESS_LOG_TYPE": true, "UNIQUE_ID": true, "ENVIRONMENT": true,
	"DOWNSTREAM_PEER_URI_SAN": true, "DOWNSTREAM_LOCAL_URI_SAN": true, "DOWNSTREAM_PEER_SUBJECT": true,
	"DOWNSTREAM_LOCAL_SUBJECT": true, "DOWNSTREAM_PEER_ISSUER": true, "DOWNSTREAM_TLS_SESSION_ID": true,
	"DOWNSTREAM_TLS_CIPHER": true, "DOWNSTREAM_TLS_VERSION": true, "DOWNSTREAM_PEER_FINGERPRINT_256": true,
	"DOWNSTREAM_PEER_FINGERPRINT_1": true, "DOWNSTREAM_PEER_SERIAL": true, "DOWNSTREAM_PEER_CERT": true,
	"DOWNSTREAM_PEER_CERT_V_START": true, "DOWNSTREAM_PEER_CERT_V_END": true, "DOWNSTREAM_PEER_DNS_SAN": true,
	"DOWNSTREAM_LOCAL_DNS_SAN": true, "UPSTREAM_PEER_URI_SAN": true, "UPSTREAM_LOCAL_URI_SAN": true,
	"UPSTREAM_PEER_SUBJECT": true, "UPSTREAM_LOCAL_SUBJECT": true, "UPSTREAM_PEER_ISSUER": true,
	"UPSTREAM_TLS_SESSION_ID": true, "UPSTREAM_TLS_CIPHER": true, "UPSTREAM_TLS_VERSION": true,
	"UPSTREAM_PEER_CERT": true, "DOWNSTREAM_TRANSPORT_FAILURE_REASON": true, "UPSTREAM_LOCAL_ADDRESS": true,
	"UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": true, "UPSTREAM_LOCAL_PORT": true, "UPSTREAM_CONNECTION_ID": true,
	"UPSTREAM_TRANSPORT_FAILURE_REASON": true, "DOWNSTREAM_HANDSHAKE_DURATION": true, "ROUNDTRIP_DURATION": true,
	"UPSTREAM_WIRE_BYTES_SENT": true, "UPSTREAM_WIRE_BYTES_RECEIVED": true, "DOWNSTREAM_WIRE_BYTES_SENT": true,
	"DOWNSTREAM_WIRE_BYTES_RECEIVED": true, "UPSTREAM_CONNECTION_POOL_READY_DURATION": true,
}

// ResponseFlag returns the Envoy response flag of a connection's outcome:
// "-" for a forwarded connection; UF (upstream connection failure) for
// dial-failed; UO (upstream overflow) for over-limit; NC (no cluster
// found) for every other refusal, as Envoy's catch-all filter chain finds
// no cluster for such a name (a service with no instance in the catalog
// has none; one whose instances are all critical is routed, in panic).
func ResponseFlag(outcome string) string {
	switch outcome {
	case gateway.OutcomeForwarded, "":
		return "-"
	case gateway.ReasonDialFailed:
		return "UF"
	case gateway.ReasonOverLimit:
		return "UO"
	}
	return "NC"
}

var longFlags = map[string]string{"UF": "UpstreamConnectionFailure", "UO": "UpstreamOverflow",
	"NC": "NoClusterFound", "-": "-"}

var hostname, _ = os.Hostname()

func newOperator(name, arg string, max int) (*operator, error) {
	str := func(f func(r *gateway.ConnRecord) string) func(r *gateway.ConnRecord) any {
		return func(r *gateway.ConnRecord) any {
			if s := f(r); s != "" {
				return s
			}
			return nil
		}
	}
	var v func(r *gateway.ConnRecord) any
	switch name {
	case "START_TIME":
		layout, err := strftime(arg)
		if err != nil {
			return nil, err
		}
		v = func(r *gateway.ConnRecord) any { return layout(r.Start.UTC()) }
	case "DURATION":
		v = func(r *gateway.ConnRecord) any { return r.Stats.Duration.Milliseconds() }
	case "BYTES_RECEIVED":
		v = func(r *gateway.ConnRecord) any { return r.Stats.ClientToUpstream }
	case "BYTES_SENT":
		v = func(r *gateway.ConnRecord) any { return r.Stats.UpstreamToClient }
	case "RESPONSE_CODE":
		v = func(*gateway.ConnRecord) any { return int64(0) } // Envoy's for TCP
	case "RESPONSE_FLAGS":
		v = func(r *gateway.ConnRecord) any { return ResponseFlag(r.Outcome) }
	case "RESPONSE_FLAGS_LONG":
		v = func(r *gateway.ConnRecord) any { return longFlags[ResponseFlag(r.Outcome)] }
	case "CONNECTION_TERMINATION_DETAILS":
		// meshgate puts its refusal reason here.
		v = str(func(r *gateway.ConnRecord) string {
			if r.Outcome == gateway.OutcomeForwarded {
				return ""
			}
			return r.Outcome
		})
	case "UPSTREAM_HOST", "UPSTREAM_REMOTE_ADDRESS":
		v = str(func(r *gateway.ConnRecord) string { return r.Target })
	case "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
		v = str(func(r *gateway.ConnRecord) string { return hostOf(r.Target) })
	case "UPSTREAM_REMOTE_PORT":
		v = portValue(func(r *gateway.ConnRecord) string { return r.Target })
	case "UPSTREAM_CLUSTER":
		// The route's name, or Envoy's cluster name (Envoy.Cluster).
		v = str(func(r *gateway.ConnRecord) string { return r.Route })
	case "DOWNSTREAM_LOCAL_ADDRESS":
		v = str(func(r *gateway.ConnRecord) string { return addr(r.Local) })
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
		v = str(func(r *gateway.ConnRecord) string { return hostOf(addr(r.Local)) })
	case "DOWNSTREAM_LOCAL_PORT":
		v = portValue(func(r *gateway.ConnRecord) string { return addr(r.Local) })
	case "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
		v = str(func(r *gateway.ConnRecord) string { return addr(r.Remote) })
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
		v = str(func(r *gateway.ConnRecord) string { return hostOf(addr(r.Remote)) })
	case "DOWNSTREAM_REMOTE_PORT", "DOWNSTREAM_DIRECT_REMOTE_PORT":
		v = portValue(func(r *gateway.ConnRecord) string { return addr(r.Remote) })
	case "REQUESTED_SERVER_NAME":
		v = str(func(r *gateway.ConnRecord) string { return r.ServerName })
	case "CONNECTION_ID":
		v = func(r *gateway.ConnRecord) any { return int64(r.ID) }
	case "HOSTNAME":
		v = str(func(*gateway.ConnRecord) string { return hostname })
	default:
		if !emptyOnTCP[name] {
			return nil, fmt.Errorf("accesslog: unknown command operator %%%s%%", name)
		}
		v = func(*gateway.ConnRecord) any { return nil }
	}
	return &operator{max: max, value: v}, nil
}

func portValue(of func(r *gateway.ConnRecord) string) func(r *gateway.ConnRecord) any {
	return func(r *gateway.ConnRecord) any {
		_, port, err := net.SplitHostPort(of(r))
		if err != nil {
			return nil
		}
		n, err := strconv.ParseInt(port, 10, 64)
		if err != nil {
			return nil
		}
		return n
	}
}

func hostOf(a string) string {
	if h, _, err := net.SplitHostPort(a); err == nil {
		return h
	}
	return a
}

// strftime compiles the subset of Envoy's START_TIME format specifiers
// that describe a time (absl's FormatTime); empty means Envoy's default,
// "%Y-%m-%dT%H:%M:%E3SZ" in UTC.
func strftime(f string) (func(time.Time) string, error) {
	if f == "" {
		return func(t time.Time) string { return t.Format("2006-01-02T15:04:05.000Z") }, nil
	}
	var parts []func(b *strings.Builder, t time.Time)
	lit := func(s string) {
		parts = append(parts, func(b *strings.Builder, _ time.Time) { b.WriteString(s) })
	}
	layout := func(l string) {
		parts = append(parts, func(b *strings.Builder, t time.Time) { b.WriteString(t.Format(l)) })
	}
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			j := strings.IndexByte(f[i:], '%')
			if j < 0 {
				j = len(f) - i
			}
			lit(f[i : i+j])
			i += j - 1
			continue
		}
		if i+1 >= len(f) {
			return nil, fmt.Errorf("accesslog: START_TIME format %q ends with %%", f)
		}
		i++
		switch c := f[i]; c {
		case 'Y':
			layout("2006")
		case 'm':
			layout("01")
		case 'd':
			layout("02")
		case 'H':
			layout("15")
		case 'M':
			layout("04")
		case 'S':
			layout("05")
		case 'z':
			layout("-0700")
		case 'Z':
			layout("MST")
		case 'b':
			layout("Jan")
		case 'a':
			layout("Mon")
		case 'j':
			layout("002")
		case 's':
			parts = append(parts, func(b *strings.Builder, t time.Time) { b.WriteString(strconv.FormatInt(t.Unix(), 10)) })
		case '%':
			lit("%")
		case 'E':
			// %E3S, %E6S, %E9S: seconds with that many digits; %Es: epoch.
			if i+2 < len(f) && f[i+2] == 'S' && strings.ContainsRune("369", rune(f[i+1])) {
				layout("05." + strings.Repeat("0", int(f[i+1]-'0')))
				i += 2
				continue
			}
			return nil, fmt.Errorf("accesslog: START_TIME format %q: unsupported specifier %%E%s", f, f[i+1:min(i+3, len(f))])
		default:
			return nil, fmt.Errorf("accesslog: START_TIME format %q: unsupported specifier %%%c", f, c)
		}
	}
	return func(t time.Time) string {
		var b strings.Builder
		for _, p := range parts {
			p(&b, t)
		}
		return b.String()
	}, nil
}
