package gateway

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

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
