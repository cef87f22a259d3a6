package admin

import (
	"net"
	"sync"
	"time"

	"github.com/meshgate/meshgate/gateway"
)

// DefaultRefusals is how many refusals Refusals keeps by default.
const DefaultRefusals = 256

// maxDetail bounds a refusal's detail, so that Refusals' memory stays
// bounded whatever errors say.
const maxDetail = 512

// Refusal is one connection the gateway refused, or one it forwarded that
// ended with an error.
type Refusal struct {
	Time       time.Time `json:"time"`
	Client     string    `json:"client"`
	ServerName string    `json:"server_name,omitempty"`
	Route      string    `json:"route,omitempty"`
	Target     string    `json:"target,omitempty"`
	// Reason is the refusal's reason (a gateway.Reason* or a Router's), or
	// "forwarded" for a forwarded connection that ended with an error.
	Reason string `json:"reason"`
	// Detail is the error, at most 512 bytes.
	Detail string `json:"detail,omitempty"`
}

// Refusals is a gateway.ConnObserver that keeps the last refused or failed
// connections, for /refusals: a ring of fixed size, so that a flood of
// hostile connections costs no more memory than the last ones. Make it
// with NewRefusals.
type Refusals struct {
	gateway.Counters // the plain events, counted

	mu   sync.Mutex
	ring []Refusal
	next int
	full bool
}

var _ gateway.ConnObserver = (*Refusals)(nil)

// NewRefusals returns Refusals keeping the last n (DefaultRefusals when n
// is not positive).
func NewRefusals(n int) *Refusals {
	if n <= 0 {
		n = DefaultRefusals
	}
	return &Refusals{ring: make([]Refusal, n)}
}

// Closed implements gateway.ConnObserver.
func (r *Refusals) Closed(rec *gateway.ConnRecord) {
	if rec.Outcome == gateway.OutcomeForwarded && rec.Err == nil {
		return
	}
	f := Refusal{Time: rec.Start, ServerName: rec.ServerName, Route: rec.Route, Target: rec.Target, Reason: rec.Outcome}
	if rec.Remote != nil {
		f.Client = addrString(rec.Remote)
	}
	if rec.Err != nil {
		f.Detail = rec.Err.Error()
		if len(f.Detail) > maxDetail {
			f.Detail = f.Detail[:maxDetail]
		}
	}
	r.mu.Lock()
	r.ring[r.next] = f
	r.next++
	if r.next == len(r.ring) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

func addrString(a net.Addr) string { return a.String() }

// Last returns the refusals kept, the newest first.
func (r *Refusals) Last() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.ring)
	}
	out := make([]Refusal, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.ring[(r.next-i+len(r.ring))%len(r.ring)])
	}
	return out
}

// Cap returns how many refusals r keeps at most.
func (r *Refusals) Cap() int { return len(r.ring) }
