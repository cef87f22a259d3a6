package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sort"

	"github.com/meshgate/meshgate/gateway"
	"github.com/meshgate/meshgate/internal/tenancy"
	"github.com/meshgate/meshgate/liveconfig"
	"github.com/meshgate/meshgate/mesh"
	"github.com/meshgate/meshgate/proxyconfig"
)

// reloadFrom is what a file-mode gateway was started from.
type reloadFrom struct {
	configs                 []string
	datacenter, trustDomain string
	services, remotes       addrList
	listen                  string
	l7                      l7Handling
	service                 string // the gateway's service name
	// wrap returns the source to route over for a new one (the probes'
	// wrapper, with next inside); nil routes over next itself.
	wrap func(next mesh.Source) mesh.Source
}

// reload rereads the files, applies the proxy-defaults Config (listeners,
// timeouts, keepalive) and swaps the router, unless the files are broken,
// an option is bad, a new address cannot be listened on, or the routes
// would lead to the gateway itself: then it says why and the previous
// configuration stays in force. Open connections are untouched either way.
// It returns the source now in force: prev or the new one.
func reload(ctx context.Context, log *slog.Logger, router *gateway.Switch, lv *liveconfig.Applier, from reloadFrom, prev mesh.Source) mesh.Source {
	refuse := func(err error) mesh.Source {
		log.Error("meshgateway: reload failed; the previous configuration stays in force", "err", err.Error())
		return prev
	}
	src, config, err := buildSource(from.configs, from.datacenter, from.trustDomain, from.services, from.remotes)
	if err != nil {
		return refuse(err)
	}
	opts, err := proxyconfig.ParseGateway(config)
	if err != nil {
		return refuse(fmt.Errorf("proxy-defaults Config: %w", err))
	}
	next := src.View()
	for _, addr := range lv.Listening() {
		if err := refuseSelfRoutes(ctx, addr, next); err != nil {
			return refuse(err)
		}
	}
	check := lv.SetCheck(func(addr net.Addr) error { return refuseSelfRoutes(ctx, addr, next) })
	if err := lv.Apply(ctx, opts, opts.Binds(from.listen, nil)); err != nil {
		lv.SetCheck(check)
		return refuse(err)
	}
	routed := mesh.Source(src)
	if from.wrap != nil {
		routed = from.wrap(src)
	}
	router.Store(lv.Router(gatewayRouter(routed, from.l7, from.service)))
	added, removed, changed := serviceChanges(prev.View(), next)
	log.Info("meshgateway: reloaded", "services", len(next.Services), "gateway_locations", len(next.Gateways), "peers", len(next.Peers),
		"services_added", added, "services_removed", removed, "services_changed", changed)
	return src
}

// serviceChanges names the services whose endpoints appeared, went, or
// changed from before to after.
func serviceChanges(before, after *mesh.View) (added, removed, changed []string) {
	for k, eps := range after.Services {
		old, ok := before.Services[k]
		switch {
		case !ok:
			added = append(added, keyName(k))
		case !reflect.DeepEqual(old, eps):
			changed = append(changed, keyName(k))
		}
	}
	for k := range before.Services {
		if _, ok := after.Services[k]; !ok {
			removed = append(removed, keyName(k))
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	sort.Strings(changed)
	return added, removed, changed
}

// keyName writes k as namespace/name in datacenter, leaving out defaults.
func keyName(k mesh.ServiceKey) string {
	name := k.Name
	if k.Namespace != "" && k.Namespace != tenancy.Default {
		name = k.Namespace + "/" + name
	}
	if k.Partition != "" && k.Partition != tenancy.Default {
		name = k.Partition + "/" + name
	}
	return name + "@" + k.Datacenter
}
