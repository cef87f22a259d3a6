package accesslog_test

import (
	"log/slog"
	"os"

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
