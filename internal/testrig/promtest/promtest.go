// Package promtest runs a real Prometheus (Debian's package, installed by
// scripts/install-prometheus.sh) for tests: it scrapes the targets given,
// on loopback, and answers PromQL queries over its HTTP API.
package promtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BinaryEnv names a Prometheus binary to use instead of the one on PATH.
const BinaryEnv = "MESHGATE_PROMETHEUS_BIN"

// Binary returns the Prometheus binary: $MESHGATE_PROMETHEUS_BIN, or the
// path printed by scripts/install-prometheus.sh, which finds prometheus on
// PATH or installs Debian's package the first time (as consultest builds
// Consul). It fails the test, loudly, if neither works: tests that need
// Prometheus are never skipped.
func Binary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		if p := os.Getenv(BinaryEnv); p != "" {
			binPath = p
			return
		}
		script, err := installScript()
		if err != nil {
			binErr = err
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("bash", script)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("installing Prometheus with scripts/install-prometheus.sh: %v\n%s", err, tail(stderr.String(), 2000))
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	if binErr != nil {
		tb.Fatalf("promtest: no prometheus binary: %v (or set %s)", binErr, BinaryEnv)
	}
	return binPath
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// installScript finds scripts/install-prometheus.sh above the working
// directory, which go test sets to the package's.
func installScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "scripts", "install-prometheus.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("scripts/install-prometheus.sh not found above the working directory")
		}
		dir = parent
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Server is a running Prometheus.
type Server struct {
	// URL is its HTTP API's base, http://127.0.0.1:PORT.
	URL string
}

// Start runs Prometheus scraping each target ("host:port", path /metrics)
// every 500 ms, with labels added to every series as a scrape job's
// labels are; it stops when the test ends.
func Start(tb testing.TB, labels map[string]string, targets ...string) *Server {
	tb.Helper()
	bin := Binary(tb)
	dir := tb.TempDir()
	var lbl []string
	for k, v := range labels {
		lbl = append(lbl, fmt.Sprintf("%s: %q", k, v))
	}
	quoted := make([]string, len(targets))
	for i, t := range targets {
		quoted[i] = strconv.Quote(t)
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: meshgate\n    static_configs:\n      - targets: [%s]\n        labels: {%s}\n",
		strings.Join(quoted, ", "), strings.Join(lbl, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		tb.Fatal(err)
	}
	addr := freePort(tb)
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("promtest: starting %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	s := &Server{URL: "http://" + addr}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(s.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logf.Name())
			tb.Fatalf("promtest: prometheus exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("promtest: prometheus at %s not ready after 2 minutes", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePort returns a loopback address with a port free a moment ago.
func freePort(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Sample is one series of a query's instant vector.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Query evaluates expr now and returns its instant vector (a scalar as
// one sample without labels).
func (s *Server) Query(expr string) ([]Sample, error) {
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := s.get("/api/v1/query", url.Values{"query": {expr}}, &body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("promtest: query %q: %s", expr, body.Error)
	}
	parse := func(v [2]any) (float64, error) {
		str, _ := v[1].(string)
		return strconv.ParseFloat(str, 64)
	}
	switch body.Data.ResultType {
	case "vector":
		var rs []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(body.Data.Result, &rs); err != nil {
			return nil, err
		}
		out := make([]Sample, 0, len(rs))
		for _, r := range rs {
			v, err := parse(r.Value)
			if err != nil {
				return nil, err
			}
			out = append(out, Sample{Labels: r.Metric, Value: v})
		}
		return out, nil
	case "scalar":
		var r [2]any
		if err := json.Unmarshal(body.Data.Result, &r); err != nil {
			return nil, err
		}
		v, err := parse(r)
		return []Sample{{Value: v}}, err
	}
	return nil, fmt.Errorf("promtest: query %q: result type %q", expr, body.Data.ResultType)
}

// LabelValues returns the values of label over the series that match
// selects, as Grafana's label_values(selector, label) asks.
func (s *Server) LabelValues(label, match string) ([]string, error) {
	var body struct {
		Status string   `json:"status"`
		Error  string   `json:"error"`
		Data   []string `json:"data"`
	}
	q := url.Values{}
	if match != "" {
		q.Set("match[]", match)
	}
	if err := s.get("/api/v1/label/"+url.PathEscape(label)+"/values", q, &body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("promtest: label_values(%s, %s): %s", match, label, body.Error)
	}
	return body.Data, nil
}

func (s *Server) get(path string, q url.Values, into any) error {
	resp, err := http.Get(s.URL + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(into)
}
