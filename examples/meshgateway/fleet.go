package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/gatewayhealth"
	"github.com/meshgate/meshgate/gatewaymetrics"
	"github.com/meshgate/meshgate/handover"
	"github.com/meshgate/meshgate/liveconfig"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/registration"
)

// stopSignals returns a context that the first SIGINT or SIGTERM ends, and
// a channel that the second one closes: the second cuts the grace period
// or the drain short.
func stopSignals() (context.Context, <-chan struct{}) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, stop := context.WithCancel(context.Background())
	hurry := make(chan struct{})
	go func() {
		<-sigs
		stop()
		<-sigs
		close(hurry)
	}()
	return ctx, hurry
}

// handoverKey carries the process's *handover.Process in run's context, so
// that every listener the gateway opens, at start or when its bind options
// change, is one a previous process may have handed over.
type handoverKey struct{}

// listenTCP listens on addr, or takes the listener a previous process
// handed over for it. Keepalive is the Server's to set (TCPKeepAlive); the
// listener's default would add system calls to every connection.
func listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	lc := &net.ListenConfig{KeepAlive: -1}
	if p, ok := ctx.Value(handoverKey{}).(*handover.Process); ok {
		return p.Listen(ctx, lc, "tcp", addr)
	}
	return lc.Listen(ctx, "tcp", addr)
}

// maintenanceReason marks the maintenance this program turns on at
// shutdown, so that a later start turns off its own and no one else's.
const maintenanceReason = "meshgate: shutting down"

// withdraw puts the gateway's registration in maintenance: a critical
// check every watcher of the catalog sees within tens of milliseconds,
// which takes it out of sidecars' and other gateways' routes while it
// still serves. A registration of its own is put in maintenance only while
// it is still this instance's (registration.ErrReplaced: another instance
// serves it now, and is left alone); an attached one (-proxy-id alone) is
// put in maintenance as it is.
func (g *consulGateway) withdraw(ctx context.Context) error {
	reason := fmt.Sprintf("%s (pid %d)", maintenanceReason, os.Getpid())
	if g.registered != nil {
		err := g.registered.Maintenance(ctx, true, reason)
		if errors.Is(err, registration.ErrReplaced) {
			g.log.Info("meshgateway: registration left as it is: another instance registered it since", "err", err)
			return nil
		}
		if err != nil {
			return err
		}
	} else if err := g.client.Agent().EnableServiceMaintenanceOpts(g.id, reason, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("maintenance on for %q: %w", g.id, err)
	}
	g.log.Info("meshgateway: in maintenance in Consul: out of every route", "id", g.id)
	return nil
}

// clearOwnMaintenance turns off the maintenance of gateway id when it is
// one a previous run of this program left (it was stopped before it could
// deregister, or it serves someone else's registration, which it does not
// deregister); an operator's maintenance stays.
func clearOwnMaintenance(ctx context.Context, client *api.Client, id string, log *slog.Logger) error {
	checks, err := client.Agent().ChecksWithFilterOpts(fmt.Sprintf("ServiceID == %q", id), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("reading the checks of %q: %w", id, err)
	}
	for _, c := range checks {
		if strings.HasPrefix(c.CheckID, "_service_maintenance:") && strings.HasPrefix(c.Notes, maintenanceReason) {
			if err := client.Agent().DisableServiceMaintenance(id); err != nil {
				return fmt.Errorf("maintenance off for %q: %w", id, err)
			}
			log.Info("meshgateway: turned off the maintenance a previous run left", "id", id, "notes", c.Notes)
		}
	}
	return nil
}

// swapSource is a mesh source whose source a reload replaces (file mode):
// what wraps it (gatewayhealth) stays.
type swapSource struct{ p atomic.Pointer[mesh.Source] }

func newSwapSource(src mesh.Source) *swapSource {
	s := &swapSource{}
	s.p.Store(&src)
	return s
}

func (s *swapSource) View() *mesh.View { return (*s.p.Load()).View() }

func (s *swapSource) store(src mesh.Source) { s.p.Store(&src) }

// handoverListeners returns the gateway's listeners open now, under the
// addresses they were asked for, for a binary upgrade.
func handoverListeners(lv *liveconfig.Applier) []handover.Listener {
	open := lv.Listeners()
	out := make([]handover.Listener, 0, len(open))
	for addr, ln := range open {
		out = append(out, handover.Listener{Network: "tcp", Address: addr, Listener: ln})
	}
	return out
}

// remoteGateways reads the probed gateways' states for the metrics.
func remoteGateways(h *gatewayhealth.Source) func() []gatewaymetrics.RemoteGateway {
	return func() []gatewaymetrics.RemoteGateway {
		states := h.Gateways()
		out := make([]gatewaymetrics.RemoteGateway, len(states))
		for i, g := range states {
			out[i] = gatewaymetrics.RemoteGateway{Location: g.Location, Address: g.Address, Up: g.Up, Probe: g.Latency}
		}
		return out
	}
}
