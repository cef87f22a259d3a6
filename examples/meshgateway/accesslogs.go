package main

import (
	"log/slog"
	"sync"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/accesslog"
	"github.com/meshgate/meshgate/routing"
)

// consulFields applies, while the gateway runs, the AccessLogs Consul
// gives the gateway (proxy-defaults', under its registration's own, as the
// agent merges them), unless -access-log is given, and names in one
// warning what the gateway does not apply (routing.UnappliedWarner): the
// fields of the view's entries, an AccessLogs that -access-log overrides
// or that cannot be applied.
type consulFields struct {
	envoy   *accesslog.Envoy // nil when -access-log is given
	log     *slog.Logger
	warner  *routing.UnappliedWarner
	mu      sync.Mutex
	problem string // why the AccessLogs last seen are not applied
}

// newConsulFields: terminatesL7 when -l7-exports terminate serves the
// http, http2 and grpc exports (their hash-based policies apply).
func newConsulFields(log *slog.Logger, gatewayService string, accessLogFlag, terminatesL7 bool) *consulFields {
	f := &consulFields{log: log}
	if !accessLogFlag {
		f.envoy = &accesslog.Envoy{}
	}
	f.warner = &routing.UnappliedWarner{Logger: log, GatewayService: gatewayService, TerminatesL7Exports: terminatesL7, Extra: f.extra}
	return f
}

// applyAccessLogs puts cfg in force for the next connections.
func (f *consulFields) applyAccessLogs(cfg *api.AccessLogsConfig) {
	problem := ""
	switch {
	case f.envoy == nil:
		if cfg != nil && cfg.Enabled {
			problem = "AccessLogs: not applied: -access-log is given and wins"
		}
	default:
		before := f.envoy.InForce()
		if err := f.envoy.Apply(cfg); err != nil {
			problem = "AccessLogs: " + err.Error() + ": the access log in force stays"
		} else if now := f.envoy.InForce(); now != before {
			f.log.Info("meshgateway: access log from AccessLogs", "enabled", now.Enabled, "type", now.Type, "path", now.Path)
		}
	}
	f.mu.Lock()
	changed := f.problem != problem
	f.problem = problem
	f.mu.Unlock()
	if changed {
		f.warner.Recheck()
	}
}

func (f *consulFields) extra() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.problem == "" {
		return nil
	}
	return []string{f.problem}
}
