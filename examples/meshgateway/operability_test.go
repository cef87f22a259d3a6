package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/config"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// getStatus returns the status and body of GET url, or 0 if it failed.
func getStatus(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// counter returns the summed value of a scraped family's metrics whose
// labels include labels.
func counter(families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	var sum float64
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range labels {
			ok = ok && have[k] == v
		}
		if ok {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// The admin endpoint serves metrics that equal the traffic, /ready that
// flips to 503 on drain, and profiles; the access log and the diagnostic
// log are JSON lines.
func TestAdminEndpointAndAccessLog(t *testing.T) {
	web, reached := echoBackend(t)
	admin := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	accessPath := filepath.Join(t.TempDir(), "access.log")
	gw, logs, stop := start(t, "-service", "web="+web, "-admin", strings.TrimPrefix(admin, "http://"),
		"-access-log", accessPath, "-log-format", "json", "-drain", "1m")
	webName := sni.ServiceSNI("web", "", "", "", "dc1", config.DefaultTrustDomain)

	code, body := getStatus(admin + "/ready")
	assert.Equal(t, http.StatusOK, code, body)
	for range 2 {
		assert.True(t, reaches(t, gw, webName, reached))
	}
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	c.Close()
	c, err = net.Dial("tcp", gw)
	require.NoError(t, err)
	assert.Error(t, tlsClient(c, sni.ServiceSNI("db", "", "", "", "dc1", config.DefaultTrustDomain)).Handshake(), "no route: closed")
	c.Close()

	// Scrape until every connection has closed.
	var families map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		resp, err := http.Get(admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.LegacyValidation)
		families, err = p.TextToMetricFamilies(resp.Body)
		require.NoError(t, err)
		return counter(families, "meshgate_connections_accepted_total", nil) == 4 &&
			counter(families, "meshgate_connections_active", nil) == 0
	}, time.Minute, 20*time.Millisecond)
	assert.EqualValues(t, 2, counter(families, "meshgate_connections_forwarded_total", map[string]string{"route": "service web"}))
	assert.EqualValues(t, 1, counter(families, "meshgate_connections_rejected_total", map[string]string{"reason": "not-tls"}))
	assert.EqualValues(t, 1, counter(families, "meshgate_connections_rejected_total", map[string]string{"reason": routing.ReasonUnknownService}))
	assert.Positive(t, counter(families, "meshgate_client_to_upstream_bytes_total", map[string]string{"route": "service web"}))
	assert.Contains(t, families, "go_goroutines", "the Go runtime's collectors")
	code, body = getStatus(admin + "/debug/pprof/")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "goroutine")

	// An open connection holds the drain; /ready says 503 meanwhile.
	held, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	tc := tlsClient(held, webName)
	go tc.Handshake()
	<-reached
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	require.Eventually(t, func() bool {
		code, body := getStatus(admin + "/ready")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "drain: draining")
	}, time.Minute, 20*time.Millisecond, "/ready never said 503, draining, while draining")
	held.Close()
	require.NoError(t, <-stopped)

	f, err := os.Open(accessPath)
	require.NoError(t, err)
	defer f.Close()
	outcomes := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line), sc.Text())
		for _, k := range []string{"time", "client", "server_name", "route", "target", "client_to_upstream_bytes",
			"upstream_to_client_bytes", "duration_ms", "outcome"} {
			assert.Contains(t, line, k, sc.Text())
		}
		outcomes[line["outcome"].(string)]++
		if line["outcome"] == "forwarded" {
			assert.Equal(t, webName, line["server_name"])
			assert.Equal(t, web, line["target"])
		}
	}
	assert.Equal(t, map[string]int{"forwarded": 3, "not-tls": 1, routing.ReasonUnknownService: 1}, outcomes)
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		assert.True(t, json.Valid([]byte(line)), "diagnostic log line is JSON: %s", line)
	}
}

// -envoy-metrics adds the series a Consul mesh gateway's Envoy reports,
// labelled as Consul labels them; it needs -admin.
func TestEnvoyMetricsFlag(t *testing.T) {
	err := run(t.Context(), []string{"-envoy-metrics"}, io.Discard, nil)
	require.ErrorContains(t, err, "-envoy-metrics needs -admin")

	web, reached := echoBackend(t)
	admin := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	gw, _, _ := start(t, "-service", "web="+web, "-admin", strings.TrimPrefix(admin, "http://"), "-envoy-metrics", "-service-name", "gw1")
	webName := sni.ServiceSNI("web", "", "", "", "dc1", config.DefaultTrustDomain)
	assert.True(t, reaches(t, gw, webName, reached))
	var families map[string]*dto.MetricFamily
	labels := map[string]string{"envoy_cluster_name": "web", "consul_destination_service": "web", "local_cluster": "gw1",
		"consul_source_service": "gw1", "consul_source_datacenter": "dc1"}
	require.Eventually(t, func() bool {
		resp, err := http.Get(admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.LegacyValidation)
		families, err = p.TextToMetricFamilies(resp.Body)
		require.NoError(t, err)
		return counter(families, "envoy_cluster_upstream_cx_total", labels) == 1
	}, time.Minute, 20*time.Millisecond)
	assert.EqualValues(t, 1, counter(families, "envoy_cluster_membership_healthy", labels))
	assert.EqualValues(t, 1, counter(families, "envoy_server_live", map[string]string{"local_cluster": "gw1"}))
	assert.Contains(t, families, "meshgate_connections_accepted_total", "beside the meshgate_* ones")
}

// /ready says what is missing before the first view (an agent that does
// not answer yet), and is 200 for a gateway with no services at all.
func TestReadyBeforeTheViewAndWithoutServices(t *testing.T) {
	closed := freePort(t)
	t.Setenv("CONSUL_HTTP_ADDR", net.JoinHostPort("127.0.0.1", strconv.Itoa(closed)))
	admin := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-consul", "-consul-wait", "-admin", strings.TrimPrefix(admin, "http://")}, io.Discard, nil)
	}()
	var body string
	require.Eventually(t, func() bool {
		var code int
		code, body = getStatus(admin + "/ready")
		return code == http.StatusServiceUnavailable
	}, time.Minute, 20*time.Millisecond)
	assert.Contains(t, body, "listener: the listeners are not open yet")
	assert.Contains(t, body, "view: no view has loaded yet")
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("run did not end with its context while waiting for the agent")
	}

	admin2 := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	start(t, "-admin", strings.TrimPrefix(admin2, "http://"))
	code, body := getStatus(admin2 + "/ready")
	assert.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, "ready\n", body)
}
