// Package accesslog writes one line per gateway connection, forwarded or
// rejected, through log/slog: a slog.JSONHandler gives JSON lines for log
// pipelines, a slog.TextHandler logfmt. Put a *Log on a gateway.Server's
// Observer (with gateway.MultiObserver beside metrics); a Server without
// it builds no records at all.
//
// Each line carries: time, msg "connection", id, client, listener,
// server_name, route, kind (the route's kind: service, gateway,
// wan-federation, ...), target, outcome ("forwarded" or the rejection's
// reason), client_to_upstream_bytes, upstream_to_client_bytes,
// duration_ms, hello_read_ms, and error when there was one.
package accesslog

import (
	"context"
	"log/slog"
	"net"

	"github.com/meshgate/meshgate/gateway"
)

// Log is a gateway.ConnObserver that writes each connection's record to
// its logger at Info.
type Log struct {
	logger *slog.Logger
}

var _ gateway.ConnObserver = (*Log)(nil)

// New returns a Log writing to logger.
func New(logger *slog.Logger) *Log { return &Log{logger: logger} }

// Accepted implements gateway.Observer; the line is written at Closed.
func (l *Log) Accepted(net.Addr) {}

// Rejected implements gateway.Observer; the line is written at Closed.
func (l *Log) Rejected(string, error) {}

// DialFailed implements gateway.Observer; the line is written at Closed.
func (l *Log) DialFailed(string, string, error) {}

// Forwarded implements gateway.Observer; the line is written at Closed.
func (l *Log) Forwarded(string, string, gateway.Stats) {}

// Closed writes r's line.
func (l *Log) Closed(r *gateway.ConnRecord) {
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.Uint64("id", r.ID),
		slog.String("client", addr(r.Remote)),
		slog.String("listener", addr(r.Local)),
		slog.String("server_name", r.ServerName),
		slog.String("route", r.Route),
		slog.String("kind", r.Kind),
		slog.String("target", r.Target),
		slog.String("outcome", r.Outcome),
		slog.Int64("client_to_upstream_bytes", r.Stats.ClientToUpstream),
		slog.Int64("upstream_to_client_bytes", r.Stats.UpstreamToClient),
		slog.Float64("duration_ms", float64(r.Stats.Duration.Microseconds())/1000),
		slog.Float64("hello_read_ms", float64(r.Peek.Microseconds())/1000),
	)
	if r.Err != nil {
		attrs = append(attrs, slog.String("error", r.Err.Error()))
	}
	l.logger.LogAttrs(context.Background(), slog.LevelInfo, "connection", attrs...)
}

func addr(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
