package l7

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

// clientFrames writes the preface (if preface) and, per stream, HEADERS
// then, if reset, RST_STREAM.
func clientFrames(t *testing.T, preface bool, first, n uint32, reset bool) []byte {
	var b bytes.Buffer
	if preface {
		b.WriteString(http2.ClientPreface)
	}
	fr := http2.NewFramer(&b, nil)
	if preface {
		require.NoError(t, fr.WriteSettings())
	}
	for id := first; id < first+2*n; id += 2 {
		require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x82}, EndHeaders: true, EndStream: true}))
		if reset {
			require.NoError(t, fr.WriteRSTStream(id, http2.ErrCodeCancel))
		}
	}
	return b.Bytes()
}

// A flood of streams opened and reset at once trips the guard at the
// 250th, and the bytes after that frame are withheld from the server,
// however the flood is cut into reads.
func TestH2GuardTripsOnRapidReset(t *testing.T) {
	for _, chunk := range []int{1, 7, 4096, 1 << 20} {
		clock := &fakeClock{t: time.Unix(1000, 0)}
		g := &h2Guard{now: clock.now}
		flood := clientFrames(t, true, 1, 1000, true)
		passed := 0
		for off := 0; off < len(flood) && !g.done(); off += chunk {
			passed += g.inbound(flood[off:min(off+chunk, len(flood))])
		}
		require.True(t, g.done(), "chunks of %d", chunk)
		// The server saw the preface, SETTINGS and 250 HEADERS+RST pairs.
		want := len(clientFrames(t, true, 1, 250, true))
		assert.Equal(t, want, passed, "chunks of %d", chunk)
		assert.Equal(t, uint32(499), g.lastStream())
		assert.Equal(t, 250, g.premature)
	}
}

// Streams answered before their reset, or reset after their first
// seconds, are not premature; neither are streams that end normally.
func TestH2GuardCountsOnlyPrematureResets(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	g := &h2Guard{now: clock.now}
	g.inbound(clientFrames(t, true, 1, 300, false))
	require.False(t, g.done())
	// The server answers streams 1..299 (150 streams), with END_STREAM on
	// the first 100 of them.
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	for id := uint32(1); id < 600; id += 2 {
		if id < 300 {
			require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x88}, EndHeaders: true, EndStream: id < 200}))
		}
	}
	o := out.Bytes()
	for len(o) > 0 { // in odd pieces
		k := min(len(o), 13)
		g.outbound(o[:k])
		o = o[k:]
	}
	assert.True(t, g.outboundBoundary())
	assert.Equal(t, 100, g.closed)
	// Reset the 200 still open: 50 were answered; of the 150 unanswered,
	// 75 are reset within the first two seconds, the other 75 after.
	var rst bytes.Buffer
	fr = http2.NewFramer(&rst, nil)
	for id := uint32(201); id < 600; id += 2 {
		require.NoError(t, fr.WriteRSTStream(id, http2.ErrCodeCancel))
		if id == 449 {
			g.inbound(rst.Bytes())
			rst.Reset()
			clock.advance(2 * time.Second)
		}
	}
	g.inbound(rst.Bytes())
	assert.False(t, g.done())
	assert.Equal(t, 300, g.closed)
	assert.Equal(t, 75, g.premature)
}

// An HTTP/1.1 connection passes untouched.
func TestH2GuardStandsAsideForHTTP1(t *testing.T) {
	g := &h2Guard{now: time.Now}
	p := []byte("POST / HTTP/1.1\r\nHost: api\r\n\r\n" + string(clientFrames(t, false, 1, 1000, true)))
	assert.Equal(t, len(p), g.inbound(p))
	assert.False(t, g.done())
	assert.Equal(t, modeHTTP1, g.mode)
}

func TestGoAwayFrame(t *testing.T) {
	f, err := http2.NewFramer(nil, bytes.NewReader(goAwayFrame(499))).ReadFrame()
	require.NoError(t, err)
	ga, ok := f.(*http2.GoAwayFrame)
	require.True(t, ok)
	assert.Equal(t, uint32(499), ga.LastStreamID)
	assert.Equal(t, http2.ErrCodeEnhanceYourCalm, ga.ErrCode)
	assert.Equal(t, "too_many_premature_resets", string(ga.DebugData()))
}
