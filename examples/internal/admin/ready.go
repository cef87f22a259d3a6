package admin

import (
	"fmt"
	"strings"
	"sync"
)

// Readiness is what /ready reports: named conditions, each either met or
// saying what is missing; the endpoint is ready (200) when every one is
// met, and otherwise answers 503 with a line per unmet condition, in the
// order they were added. Conditions are polled (Add) or pushed (Set). The
// zero value is ready and has none; it is safe for concurrent use.
//
// The binaries add "listener" (open and serving), "view" (the first view
// has loaded), "certificate" (with L7 exports terminated: a valid one is
// held) and "drain" (SIGINT or SIGTERM started the shutdown). Another part
// that must hold the endpoint not ready, such as a shutdown grace period,
// adds a condition of its own name with Set.
type Readiness struct {
	mu    sync.Mutex
	names []string
	polls map[string]func() error
	set   map[string]error
}

// Add adds a polled condition: check returns nil when it is met, or an
// error saying what is missing. Adding a name again replaces its check.
func (r *Readiness) Add(name string, check func() error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.add(name)
	if r.polls == nil {
		r.polls = map[string]func() error{}
	}
	r.polls[name] = check
}

// Set sets a pushed condition: nil when it is met, or an error saying what
// is missing, until the next Set of the same name.
func (r *Readiness) Set(name string, missing error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.add(name)
	if r.set == nil {
		r.set = map[string]error{}
	}
	r.set[name] = missing
}

func (r *Readiness) add(name string) {
	for _, n := range r.names {
		if n == name {
			return
		}
	}
	r.names = append(r.names, name)
}

// Missing returns a line "name: what is missing" per unmet condition, in
// order; none when ready.
func (r *Readiness) Missing() []string {
	r.mu.Lock()
	names := append([]string(nil), r.names...)
	polls := make(map[string]func() error, len(r.polls))
	for k, v := range r.polls {
		polls[k] = v
	}
	set := make(map[string]error, len(r.set))
	for k, v := range r.set {
		set[k] = v
	}
	r.mu.Unlock()
	var out []string
	for _, n := range names {
		err := set[n]
		if check := polls[n]; check != nil && err == nil {
			err = check()
		}
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %s", n, strings.ReplaceAll(err.Error(), "\n", " ")))
		}
	}
	return out
}

// Ready reports whether every condition is met.
func (r *Readiness) Ready() bool { return len(r.Missing()) == 0 }
