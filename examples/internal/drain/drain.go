// Package drain takes a serving gateway out of its fleet in the order an
// operator needs: first out of the catalog and out of readiness, while it
// still accepts for a grace period long enough for every client to see
// that; then it stops accepting, waits for its open connections up to a
// bound, closes the rest, and deregisters. Nothing that still sends to it
// in the meantime is refused.
package drain

import (
	"context"
	"log/slog"
	"time"
)

// Server is what a Plan stops: a gateway.Server.
type Server interface {
	// Shutdown stops accepting and waits for open connections to end,
	// until ctx ends.
	Shutdown(ctx context.Context) error
	// Close closes every open connection.
	Close() error
	// ActiveConns returns how many connections are open.
	ActiveConns() int
}

// Plan is one shutdown's steps, run in this order by Run: Unready and
// Withdraw at once, Grace, then the Server stops accepting and drains for
// up to Drain, what is left is closed, and Deregister. Nil steps are
// skipped; the zero Plan only stops the Server (at once, with no wait for
// its connections).
type Plan struct {
	// Unready marks the process as not ready (an admin /ready answers
	// 503), so that a load balancer in front of it stops sending first.
	Unready func()
	// Withdraw takes the gateway out of the catalog while it still serves
	// (Consul's service maintenance: a critical check every watcher sees
	// within tens of milliseconds). Its error is logged; the shutdown goes
	// on.
	Withdraw func(ctx context.Context) error
	// Grace is how long the gateway keeps accepting after Withdraw, for the
	// sidecars and remote gateways that still send to it to see it gone;
	// zero stops accepting at once.
	Grace time.Duration
	// Server stops accepting once Grace is over. Required.
	Server Server
	// Drain bounds the wait for open connections once the Server stopped
	// accepting; those still open then are closed.
	Drain time.Duration
	// Deregister removes the registration at the end; nil leaves it (a
	// registration this process did not make, or one a new process took
	// over).
	Deregister func(ctx context.Context) error
	// Logger receives a line per step and the count of connections cut;
	// nil discards.
	Logger *slog.Logger
	// Name prefixes the log lines ("meshgateway").
	Name string
}

// stepTimeout bounds each call to the agent.
const stepTimeout = 10 * time.Second

// Result is what a shutdown did.
type Result struct {
	// Cut counts the connections closed before they ended on their own:
	// at the Drain bound, or at once on hurry.
	Cut int
	// Hurried reports whether hurry cut the grace period or the drain
	// short.
	Hurried bool
}

// Run shuts down as the Plan says. A receive from hurry (a second SIGTERM)
// ends the grace period or the drain at once: the open connections are
// closed, and the registration still removed. Run says, in the log, how
// many connections were cut.
func (p Plan) Run(hurry <-chan struct{}) Result {
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := p.Name
	if name == "" {
		name = "drain"
	}
	var res Result
	log.Info(name+": shutting down", "open_connections", p.Server.ActiveConns(), "grace", p.Grace.String(), "drain", p.Drain.String())
	if p.Unready != nil {
		p.Unready()
	}
	if p.Withdraw != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		if err := p.Withdraw(ctx); err != nil {
			log.Warn(name+": could not take the gateway out of the catalog; it goes on with the shutdown", "err", err)
		}
		cancel()
	}
	if p.Grace > 0 {
		log.Info(name+": out of the catalog and not ready; still accepting for the grace period", "grace", p.Grace.String(),
			"open_connections", p.Server.ActiveConns())
		t := time.NewTimer(p.Grace)
		select {
		case <-t.C:
		case <-hurry:
			t.Stop()
			res.Hurried = true
		}
	}
	open := p.Server.ActiveConns()
	if res.Hurried {
		res.Cut = p.closeAll()
		log.Warn(name+": second signal during the grace period; stopped and closed the open connections", "cut", res.Cut)
	} else {
		log.Info(name+": stopped accepting; draining", "open_connections", open, "drain", p.Drain.String())
		ctx, cancel := context.WithTimeout(context.Background(), p.Drain)
		done := make(chan error, 1)
		go func() { done <- p.Server.Shutdown(ctx) }()
		var err error
		select {
		case err = <-done:
		case <-hurry:
			res.Hurried = true
			cancel()
			err = <-done
		}
		cancel()
		switch {
		case err == nil:
			log.Info(name+": drained", "cut", 0)
		case res.Hurried:
			res.Cut = p.closeAll()
			log.Warn(name+": second signal during the drain; closed the open connections", "cut", res.Cut)
		default:
			res.Cut = p.closeAll()
			log.Warn(name+": drain bound reached; closed the open connections", "cut", res.Cut, "drain", p.Drain.String())
		}
	}
	if p.Deregister != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		if err := p.Deregister(ctx); err != nil {
			log.Warn(name+": deregistering", "err", err)
		} else {
			log.Info(name + ": deregistered")
		}
		cancel()
	}
	return res
}

// closeAll stops the Server and closes its connections, and returns how
// many were open.
func (p Plan) closeAll() int {
	n := p.Server.ActiveConns()
	p.Server.Close()
	return n
}
