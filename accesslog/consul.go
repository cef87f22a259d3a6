package accesslog

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gateway"
)

// Envoy is a gateway.ConnObserver that writes the access log a mesh
// gateway's AccessLogs (proxy-defaults' AccessLogs, under the gateway
// registration's own, as the agent merges them) asks of Consul's gateway,
// the way Consul configures Envoy (agent/xds/accesslogs MakeAccessLogs):
//
//   - nothing unless Enabled;
//   - Type "stdout" (or empty), "stderr", or "file" with Path, the file
//     opened for appending;
//   - each line in JSONFormat, or TextFormat, or else DefaultJSONFormat,
//     Envoy's command operators filled from the connection's record (see
//     Format);
//   - one line per connection that reached a filter chain of Envoy's
//     listener: every connection whose ClientHello was read (or that sent
//     something that is not TLS), forwarded or refused. A connection closed
//     before that (a TCP health check, a peek timeout, a ClientHello over
//     the size bound) gets no line, as Envoy's tls_inspector closes it before
//     any filter chain; and since a Consul mesh gateway's listener ends with
//     a catch-all filter chain, its listener log (the "NR" lines that
//     DisableListenerLogs turns off) never writes one, so
//     DisableListenerLogs changes nothing here either.
//
// Apply replaces the configuration while the gateway runs; the zero value
// writes nothing until then. Safe for concurrent use.
type Envoy struct {
	// Stdout and Stderr receive the lines of Type "stdout" and "stderr";
	// nil means os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
	// Cluster, if set, names the connection's upstream cluster
	// (%UPSTREAM_CLUSTER%) as Consul names Envoy's, such as
	// gatewaymetrics.ConsulCluster; nil means the route's name.
	Cluster func(r *gateway.ConnRecord) string

	mu      sync.Mutex // serialises Apply
	applied api.AccessLogsConfig
	cur     atomic.Pointer[sink]
}

var _ gateway.ConnObserver = (*Envoy)(nil)

// sink is one configuration in force: its format and where its lines go.
type sink struct {
	format *Format
	mu     sync.Mutex
	w      io.Writer
	file   *os.File // to close when replaced, or nil
	closed bool
}

func (s *sink) write(line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.w.Write(line) //nolint:errcheck // an access log never holds a connection up
	}
}

func (s *sink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.file != nil {
		s.file.Close()
	}
}

// Check reports whether cfg is an AccessLogs configuration Consul accepts
// in a config entry (AccessLogsConfig.Validate) whose format meshgate can
// write: a known Type, a Path exactly with "file", not both formats, a
// JSON format that parses, command operators Envoy knows.
func Check(cfg *api.AccessLogsConfig) error {
	switch {
	case cfg.Type != api.FileLogSinkType && cfg.Path != "":
		return fmt.Errorf("accesslog: AccessLogs.Path %q is only valid with Type %q", cfg.Path, api.FileLogSinkType)
	case cfg.JSONFormat != "" && cfg.TextFormat != "":
		return errors.New("accesslog: AccessLogs sets both JSONFormat and TextFormat")
	}
	_, err := formatOf(cfg)
	return err
}

// formatOf is the format of cfg as Consul hands it to Envoy
// (MakeAccessLogs, getLogger, getLogFormat), for a configuration the agent
// has merged from a registration and proxy-defaults without validating the
// result: JSONFormat wins over TextFormat, and Path counts only with Type
// "file".
func formatOf(cfg *api.AccessLogsConfig) (*Format, error) {
	switch cfg.Type {
	case api.DefaultLogSinkType, api.StdOutLogSinkType, api.StdErrLogSinkType:
	case api.FileLogSinkType:
		if cfg.Path == "" {
			return nil, errors.New("accesslog: AccessLogs.Type \"file\" needs a Path")
		}
	default:
		return nil, fmt.Errorf("accesslog: AccessLogs.Type %q: want stdout, stderr or file", cfg.Type)
	}
	switch {
	case cfg.JSONFormat != "":
		return ParseJSONFormat(cfg.JSONFormat)
	case cfg.TextFormat != "":
		return ParseTextFormat(cfg.TextFormat)
	}
	return ParseJSONFormat(DefaultJSONFormat)
}

// Apply puts cfg in force for the next connections: nil or not Enabled
// turns the log off. It takes cfg as Consul hands a merged configuration
// to Envoy (see formatOf: no entry validation, JSONFormat over
// TextFormat); a configuration that cannot be applied (an unknown Type or
// command operator, a JSON format that does not parse, a file that cannot
// be opened) leaves the one in force and returns why.
// Applying the configuration in force again changes nothing (the file is
// not reopened).
func (e *Envoy) Apply(cfg *api.AccessLogsConfig) error {
	var want api.AccessLogsConfig
	if cfg != nil && cfg.Enabled {
		want = *cfg
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if reflect.DeepEqual(want, e.applied) {
		return nil
	}
	var next *sink
	if want.Enabled {
		f, err := formatOf(&want)
		if err != nil {
			return err
		}
		next = &sink{format: f}
		switch want.Type {
		case api.StdErrLogSinkType:
			next.w = orStd(e.Stderr, os.Stderr)
		case api.FileLogSinkType:
			file, err := os.OpenFile(want.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return fmt.Errorf("accesslog: AccessLogs.Path: %w", err)
			}
			next.w, next.file = file, file
		default:
			next.w = orStd(e.Stdout, os.Stdout)
		}
	}
	e.applied = want
	if old := e.cur.Swap(next); old != nil {
		old.close()
	}
	return nil
}

// InForce returns the configuration in force: Enabled false when off.
func (e *Envoy) InForce() api.AccessLogsConfig {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.applied
}

// Close turns the log off and closes its file, if any.
func (e *Envoy) Close() error { return e.Apply(nil) }

func orStd(w io.Writer, std *os.File) io.Writer {
	if w != nil {
		return w
	}
	return std
}

// Accepted implements gateway.Observer; the line is written at Closed.
func (e *Envoy) Accepted(net.Addr) {}

// Rejected implements gateway.Observer; the line is written at Closed.
func (e *Envoy) Rejected(string, error) {}

// DialFailed implements gateway.Observer; the line is written at Closed.
func (e *Envoy) DialFailed(string, string, error) {}

// Forwarded implements gateway.Observer; the line is written at Closed.
func (e *Envoy) Forwarded(string, string, gateway.Stats) {}

// Closed writes r's line, when the log is on and Envoy would have written
// one.
func (e *Envoy) Closed(r *gateway.ConnRecord) {
	s := e.cur.Load()
	if s == nil {
		return
	}
	switch r.Outcome {
	case gateway.ReasonClosed, gateway.ReasonPeekTimeout, gateway.ReasonTooLarge:
		return // closed in Envoy's tls_inspector, before any filter chain
	}
	if e.Cluster != nil && r.Route != "" {
		named := *r
		named.Route = e.Cluster(r)
		r = &named
	}
	s.write(s.format.Line(r))
}
