package gateway

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is a ConnObserver keeping copies of the records.
type recorder struct {
	Counters
	mu      sync.Mutex
	records []ConnRecord
}

func (r *recorder) Closed(rec *ConnRecord) {
	r.mu.Lock()
	r.records = append(r.records, *rec)
	r.mu.Unlock()
}

func (r *recorder) all() []ConnRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ConnRecord(nil), r.records...)
}

// A ConnObserver behind MultiObserver hears each connection once, with its
// server name, route, target, bytes and outcome, after the plain events.
func TestConnObserverHearsEachConnection(t *testing.T) {
	b := startBackend(t, echo)
	var rec recorder
	var plain Counters
	gw := startGateway(t, &Server{
		Router:   tableFor(t, map[string][]string{longName: {b.addr()}}),
		Observer: MultiObserver(&plain, nil, &rec),
	})
	hello := helloBytes(t, longName)
	echoed(t, gw, hello).Close()

	other := helloBytes(t, "unknown.example")
	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write(other)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, c) // closed by the gateway
	c.Close()

	waitFor(t, "two records", func() bool { return len(rec.all()) == 2 })
	byOutcome := map[string]ConnRecord{}
	for _, r := range rec.all() {
		byOutcome[r.Outcome] = r
	}
	fwd := byOutcome[OutcomeForwarded]
	assert.Equal(t, longName, fwd.ServerName)
	assert.Equal(t, b.addr(), fwd.Target)
	assert.NotEmpty(t, fwd.Route)
	assert.EqualValues(t, len(hello), fwd.Stats.ClientToUpstream)
	assert.EqualValues(t, len(hello), fwd.Stats.UpstreamToClient)
	assert.Positive(t, fwd.Stats.Duration)
	assert.Positive(t, fwd.Peek)
	assert.NotNil(t, fwd.Remote)
	assert.NotZero(t, fwd.ID)

	rej := byOutcome[ReasonNoRoute]
	assert.Equal(t, "unknown.example", rej.ServerName)
	assert.Empty(t, rej.Target)
	assert.Error(t, rej.Err)
	assert.NotEqual(t, fwd.ID, rej.ID)

	snap := plain.Snapshot()
	assert.EqualValues(t, 2, snap.Accepted, "the other observers hear every event too")
	assert.EqualValues(t, 1, snap.Forwarded)
	assert.EqualValues(t, 1, snap.Rejected[ReasonNoRoute])
	assert.Equal(t, plain.Snapshot().Accepted, rec.Snapshot().Accepted)
}

// A MultiObserver hands on the ConnObserver of its members only: without
// one, the Server builds no records.
func TestMultiObserverWithoutConnObserverBuildsNoRecords(t *testing.T) {
	assert.Nil(t, connObserverOf(MultiObserver(&Counters{})))
	assert.Nil(t, connObserverOf(&Counters{}))
	assert.NotNil(t, connObserverOf(MultiObserver(&Counters{}, &recorder{})))
}

// opened is an UpstreamObserver keeping copies of the Connected records.
type opened struct {
	Counters
	mu      sync.Mutex
	records []ConnRecord
}

func (o *opened) Connected(rec *ConnRecord) {
	o.mu.Lock()
	o.records = append(o.records, *rec)
	o.mu.Unlock()
}

func (o *opened) all() []ConnRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]ConnRecord(nil), o.records...)
}

// An UpstreamObserver hears of a connection once its upstream is connected,
// while it is still open (a long-lived connection would otherwise show in
// no count until it closed), with the route's kind; a refused connection is
// never "connected".
func TestUpstreamObserverHearsOpenConnections(t *testing.T) {
	b := startBackend(t, echo)
	var up opened
	var rec recorder
	router := RouterFunc(func(ctx context.Context, hello *sni.ClientHello) (Route, error) {
		if hello.ServerName != longName {
			return Route{}, Reject(ReasonNoRoute, "no")
		}
		return Route{Name: "backend", Kind: "service", Targets: []string{b.addr()}}, nil
	})
	gw := startGateway(t, &Server{Router: router, Observer: MultiObserver(&up, &rec)})
	c := echoed(t, gw, helloBytes(t, longName)) // still open

	got := up.all()
	require.Len(t, got, 1, "heard before the connection ends")
	assert.Equal(t, longName, got[0].ServerName)
	assert.Equal(t, "backend", got[0].Route)
	assert.Equal(t, "service", got[0].Kind)
	assert.Equal(t, b.addr(), got[0].Target)
	assert.Empty(t, got[0].Outcome, "no outcome yet")
	assert.Empty(t, rec.all(), "not closed yet")
	c.Close()
	waitFor(t, "the close", func() bool { return len(rec.all()) == 1 })
	assert.Equal(t, "service", rec.all()[0].Kind, "the closed record has the kind too")

	r, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	r.Write(helloBytes(t, "unknown.example"))
	r.SetDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, r)
	r.Close()
	waitFor(t, "the refusal", func() bool { return len(rec.all()) == 2 })
	assert.Len(t, up.all(), 1, "a refused connection is never connected")

	assert.Nil(t, upstreamObserverOf(MultiObserver(&Counters{}, &recorder{})))
	assert.NotNil(t, upstreamObserverOf(MultiObserver(&Counters{}, &opened{})))
}

// dialRecorder is a DialObserver keeping the failed dials' records.
type dialRecorder struct {
	Counters
	mu     sync.Mutex
	failed []ConnRecord
}

func (d *dialRecorder) DialFailedConn(r *ConnRecord, err error) {
	d.mu.Lock()
	d.failed = append(d.failed, *r)
	d.mu.Unlock()
}

func (d *dialRecorder) all() []ConnRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]ConnRecord(nil), d.failed...)
}

// A DialObserver hears each failed dial with the connection's server name,
// route and kind and the target that failed, whether another target then
// connects or none does; and the failed target is then ejected.
func TestDialObserverHearsEachFailedDial(t *testing.T) {
	b := startBackend(t, echo)
	dead := startBackend(t, echo)
	deadAddr := dead.addr()
	dead.ln.Close()
	var rec dialRecorder
	router := RouterFunc(func(_ context.Context, h *sni.ClientHello) (Route, error) {
		if h.ServerName == "none.example" {
			return Route{Name: "none", Kind: "k", Targets: []string{deadAddr}}, nil
		}
		return Route{Name: "some", Kind: "k", Targets: []string{deadAddr, b.addr()}}, nil
	})
	s := &Server{Router: router, Observer: MultiObserver(nil, &rec), EjectAfter: -1}
	gw := startGateway(t, s)
	echoed(t, gw, helloBytes(t, longName)).Close()

	c, err := net.Dial("tcp", gw)
	require.NoError(t, err)
	c.Write(helloBytes(t, "none.example"))
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()

	waitFor(t, "two failed dials", func() bool { return len(rec.all()) == 2 })
	got := map[string]ConnRecord{}
	for _, r := range rec.all() {
		got[r.ServerName] = r
		assert.Equal(t, deadAddr, r.Target)
		assert.Equal(t, "k", r.Kind)
		assert.Empty(t, r.Outcome)
	}
	assert.Equal(t, "some", got[longName].Route)
	assert.Equal(t, "none", got["none.example"].Route)
	assert.EqualValues(t, 2, rec.Snapshot().DialFailures, "the plain event still comes")
}

// Ejected lists the targets outlier detection took out, and forgets one
// once a dial of it works again.
func TestServerEjectedListsEjectedTargets(t *testing.T) {
	b := startBackend(t, echo)
	dead := startBackend(t, echo)
	deadAddr := dead.addr()
	dead.ln.Close()
	s := &Server{Router: tableFor(t, map[string][]string{longName: {deadAddr, b.addr()}})}
	assert.Nil(t, s.Ejected(), "nothing before serving")
	gw := startGateway(t, s)
	echoed(t, gw, helloBytes(t, longName)).Close()
	ej := s.Ejected()
	require.Contains(t, ej, deadAddr)
	assert.False(t, ej[deadAddr].IsZero())
	assert.NotContains(t, ej, b.addr())
}
