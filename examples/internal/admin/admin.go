// Package admin is the example binaries' operator surface: an HTTP endpoint
// with Prometheus metrics, readiness by named conditions, the explanation
// of a server name's routing and the last refusals, and pprof; and the
// access log's file.
package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Endpoint is what the admin endpoint serves.
type Endpoint struct {
	// Registry is served as /metrics.
	Registry *prometheus.Registry
	// Ready is served as /ready: 200 "ready", or 503 with a line per
	// unmet condition. Nil means always ready.
	Ready *Readiness
	// Explain, when set, serves /explain?sni=NAME: the Explanation, JSON.
	Explain *Explainer
	// Refusals, when set, serves /refusals: the last ones kept, newest
	// first, JSON (?n=N for fewer).
	Refusals *Refusals
	// Listener, when set, is served on instead of listening on the
	// address (a listener a previous process handed over, in a binary
	// upgrade); stop closes it.
	Listener net.Listener
}

// Serve serves the endpoint e (and /debug/pprof/) on addr until the
// returned function is called; name prefixes its log lines.
func Serve(addr string, e Endpoint, log *slog.Logger, name string) (stop func(), err error) {
	mux := http.NewServeMux()
	paths := []string{"/metrics", "/ready"}
	mux.Handle("/metrics", promhttp.HandlerFor(e.Registry, promhttp.HandlerOpts{Registry: e.Registry}))
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		var missing []string
		if e.Ready != nil {
			missing = e.Ready.Missing()
		}
		if len(missing) > 0 {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:")
			for _, m := range missing {
				fmt.Fprintln(w, m)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if e.Explain != nil {
		paths = append(paths, "/explain")
		mux.HandleFunc("/explain", func(w http.ResponseWriter, r *http.Request) {
			name := r.URL.Query().Get("sni")
			if name == "" {
				http.Error(w, "explain: want /explain?sni=NAME", http.StatusBadRequest)
				return
			}
			writeJSON(w, e.Explain.Explain(r.Context(), name))
		})
	}
	if e.Refusals != nil {
		paths = append(paths, "/refusals")
		mux.HandleFunc("/refusals", func(w http.ResponseWriter, r *http.Request) {
			last := e.Refusals.Last()
			if n, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && n >= 0 && n < len(last) {
				last = last[:n]
			}
			writeJSON(w, last)
		})
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln := e.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("-admin: %w", err)
		}
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error(name+": admin endpoint stopped", "err", err)
		}
	}()
	log.Info(name+": admin endpoint", "addr", ln.Addr().String(), "paths", strings.Join(append(paths, "/debug/pprof/"), " "))
	return func() { srv.Close() }, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Registry returns a registry with the Go runtime's and the process's
// collectors.
func Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// OpenLog opens path for appending, or standard output for "-".
func OpenLog(path string) (io.Writer, func(), error) {
	if path == "-" {
		return os.Stdout, func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("-access-log: %w", err)
	}
	return f, func() { f.Close() }, nil
}
