package accesslog_test

import (
	"log/slog"
	"os"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/accesslog"
	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/gatewaymetrics"
)

// One JSON line per connection, forwarded or refused, beside the metrics.
func ExampleNew() {
	access := accesslog.New(slog.New(slog.NewJSONHandler(os.Stdout, nil)))
	table, _ := gateway.NewTable(map[string][]string{"api.example": {"127.0.0.1:21000"}})
	server := &gateway.Server{Router: table, Observer: gateway.MultiObserver(gatewaymetrics.New(), access)}
	_ = server // then: server.ListenAndServe("127.0.0.1:8443")
}

// The access log Consul's proxy-defaults AccessLogs asks for, in Envoy's
// format, switched on and off while the gateway runs.
func ExampleEnvoy() {
	access := &accesslog.Envoy{} // writes to os.Stdout, off until Apply
	err := access.Apply(&api.AccessLogsConfig{Enabled: true, TextFormat: "%REQUESTED_SERVER_NAME% %RESPONSE_FLAGS% %UPSTREAM_HOST%"})
	if err != nil {
		panic(err)
	}
	table, _ := gateway.NewTable(map[string][]string{"api.example": {"127.0.0.1:21000"}})
	server := &gateway.Server{Router: table, Observer: access}
	_ = server // then: server.ListenAndServe("127.0.0.1:8443")

	// What a connection's line looks like:
	access.Closed(&gateway.ConnRecord{ServerName: "api.example", Target: "127.0.0.1:21000", Outcome: gateway.OutcomeForwarded})
	access.Closed(&gateway.ConnRecord{ServerName: "db.example", Outcome: gateway.ReasonDialFailed})
	access.Apply(nil) // off again
	access.Closed(&gateway.ConnRecord{ServerName: "api.example", Outcome: gateway.OutcomeForwarded})
	// Output:
	// api.example - 127.0.0.1:21000
	// db.example UF -
}
