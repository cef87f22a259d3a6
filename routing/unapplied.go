package routing

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/resolve"
)

// UnappliedWarner names, in one warning, every field of Consul's
// configuration that a gateway sets and does not apply, each time that
// list changes, so that none is ignored silently: what the view's config
// entries set that a mesh gateway named GatewayService does not apply
// (resolve.Unapplied), and what Extra adds (a program's own: an option a
// flag overrides, an entry it could not apply). The zero value checks
// nothing until Logger is set.
type UnappliedWarner struct {
	Logger *slog.Logger
	// GatewayService is the gateway's own service name; empty means
	// DefaultGatewayService.
	GatewayService string
	// TerminatesL7Exports says the gateway terminates its http, http2 and
	// grpc exports (routing/l7), which apply hash-based load balancing
	// (resolve.UnappliedOptions).
	TerminatesL7Exports bool
	// Extra, if set, gives more fields to name, each as
	// "<where>: <field>: <why>".
	Extra func() []string

	mu   sync.Mutex
	last *string
	view *mesh.View
}

// Check warns about v, when the list differs from the last one warned
// about (an empty list after a non-empty one is said at Info). It is safe
// for concurrent use.
func (w *UnappliedWarner) Check(v *mesh.View) {
	if w.Logger == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.view = v
	list := resolve.Unapplied(v, resolve.UnappliedOptions{GatewayService: cmp.Or(w.GatewayService, DefaultGatewayService), TerminatesL7Exports: w.TerminatesL7Exports})
	if w.Extra != nil {
		list = append(list, w.Extra()...)
	}
	slices.Sort(list)
	msg := strings.Join(list, "; ")
	if w.last != nil && *w.last == msg {
		return
	}
	first := w.last == nil
	w.last = &msg
	switch {
	case msg != "":
		w.Logger.Warn("meshgate: Consul fields set but not applied by this gateway", "fields", list)
	case !first:
		w.Logger.Info("meshgate: every Consul field set is applied again")
	}
}

// Watch checks src's view now, then again each time it changes (looked
// at every interval; zero means one second), until ctx ends. Call it in a
// goroutine of its own after a first Check, or alone.
func (w *UnappliedWarner) Watch(ctx context.Context, src mesh.Source, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.mu.Lock()
		seen := w.view
		w.mu.Unlock()
		if v := src.View(); v != seen {
			w.Check(v)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Recheck checks the last view again: after Extra's answer changed.
func (w *UnappliedWarner) Recheck() {
	w.mu.Lock()
	v := w.view
	w.mu.Unlock()
	if v != nil {
		w.Check(v)
	}
}
