package l7

import (
	"encoding/binary"
	"sync"
	"time"
)

// Envoy's HTTP connection manager ends an HTTP/2 connection that resets
// too many streams early (CVE-2023-44487, "rapid reset"), with its runtime
// defaults (overload.premature_reset_min_stream_lifetime_seconds 1 and
// overload.premature_reset_total_stream_count 500): a stream closed before
// its response headers, within one second of opening counted in whole
// seconds (so less than two), is premature; with fewer than 500 streams
// closed the connection ends once 250 were premature, later once half or
// more of those closed were.
const (
	PrematureResetTotalStreams = 500
	prematureResetLifetime     = 2 * time.Second // "lifetime in whole seconds <= 1"
)

// HTTP/2 framing (RFC 9113).
const (
	h2Preface         = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	h2FrameHeaderLen  = 9
	h2FrameData       = 0x0
	h2FrameHeaders    = 0x1
	h2FrameRSTStream  = 0x3
	h2FrameGoAway     = 0x7
	h2FlagEndStream   = 0x1
	h2ErrEnhanceCalm  = 0xb
	goAwayDebugResets = "too_many_premature_resets"
)

// h2Guard watches one connection's frames in both directions, without
// decoding them, to count premature stream resets as Envoy does. The
// connection is HTTP/2 once the client's first bytes are the preface;
// otherwise the guard stands aside. Reads and writes may run concurrently.
type h2Guard struct {
	now func() time.Time

	// Client to server; only the reading goroutine touches these.
	mode    int // 0 unknown, 1 HTTP/1, 2 HTTP/2
	preface int // bytes of the preface seen
	in      frameCutter
	stopped bool // a frame tripped the guard

	// Server to client; only under the writer's lock (termConn's).
	out        frameCutter
	capturing  bool              // a payload is being kept
	captureOf  byte              // the type of its frame
	capture    []byte            // the payload kept
	onTooLarge func()            // called when the server answers Go's own 431
	onGoAway   func(code uint32) // called when the server sends GOAWAY

	mu        sync.Mutex
	open      map[uint32]*h2Stream
	last      uint32 // highest stream the client opened (and the server saw)
	closed    int
	premature int
	tripped   bool
}

// h2Stream is what the guard knows of one open stream.
type h2Stream struct {
	opened    time.Time
	responded bool // the server sent its response headers
}

const (
	modeUnknown = iota
	modeHTTP1
	modeHTTP2
)

// frameCutter finds frame headers in a byte stream cut anywhere.
type frameCutter struct {
	head   [h2FrameHeaderLen]byte
	have   int    // bytes of head read
	remain uint32 // payload bytes of the current frame still to come
}

// frame is one frame header.
type frame struct {
	typ, flags byte
	stream     uint32
	length     uint32
}

// next consumes p up to the end of the next complete frame header and
// reports it; n is how many bytes of p it consumed. ok is false when p
// ran out first.
func (c *frameCutter) next(p []byte) (f frame, n int, ok bool) {
	for n < len(p) {
		if c.remain > 0 {
			skip := min(uint32(len(p)-n), c.remain)
			c.remain -= skip
			n += int(skip)
			continue
		}
		k := copy(c.head[c.have:], p[n:])
		c.have += k
		n += k
		if c.have < h2FrameHeaderLen {
			break
		}
		c.have = 0
		c.remain = uint32(c.head[0])<<16 | uint32(c.head[1])<<8 | uint32(c.head[2])
		return frame{typ: c.head[3], flags: c.head[4], stream: binary.BigEndian.Uint32(c.head[5:]) & (1<<31 - 1), length: c.remain}, n, true
	}
	return frame{}, n, false
}

// atBoundary reports whether the stream is between frames.
func (c *frameCutter) atBoundary() bool { return c.have == 0 && c.remain == 0 }

// untilBoundary returns how many bytes of p end the frame under way (0 at
// a boundary), or -1 when p ends first. It does not consume them.
func (c *frameCutter) untilBoundary(p []byte) int {
	if c.atBoundary() {
		return 0
	}
	cc := *c
	for i := range p {
		cc.next(p[i : i+1])
		if cc.atBoundary() {
			return i + 1
		}
	}
	return -1
}

// inbound inspects bytes the client sent, as the server is about to read
// them, and returns how many of them the server may read: all of them until
// a frame trips the guard; then that frame whole (over later reads if it is
// cut) and nothing after it. done reports when nothing more may pass.
func (g *h2Guard) inbound(p []byte) (pass int) {
	if g.stopped {
		k := min(g.in.remain, uint32(len(p)))
		g.in.remain -= k
		return int(k)
	}
	n := 0
	if g.mode == modeUnknown {
		for n < len(p) && g.preface < len(h2Preface) {
			if p[n] != h2Preface[g.preface] {
				g.mode = modeHTTP1
				return len(p)
			}
			n++
			g.preface++
		}
		if g.preface < len(h2Preface) {
			return len(p)
		}
		g.mode = modeHTTP2
	}
	if g.mode != modeHTTP2 {
		return len(p)
	}
	for n < len(p) {
		f, used, ok := g.in.next(p[n:])
		n += used
		if !ok {
			break
		}
		if g.clientFrame(f) {
			g.stopped = true
			k := min(g.in.remain, uint32(len(p)-n))
			g.in.remain -= k
			return n + int(k)
		}
	}
	return len(p)
}

// done reports whether the guard has tripped and the frame that tripped it
// has passed: the server must read nothing more.
func (g *h2Guard) done() bool { return g.stopped && g.in.remain == 0 }

// clientFrame notes a frame from the client and reports whether it trips
// the guard.
func (g *h2Guard) clientFrame(f frame) bool {
	switch f.typ {
	case h2FrameHeaders:
		g.mu.Lock()
		defer g.mu.Unlock()
		if f.stream > g.last && f.stream%2 == 1 {
			g.last = f.stream
			if g.open == nil {
				g.open = map[uint32]*h2Stream{}
			}
			g.open[f.stream] = &h2Stream{opened: g.now()}
		}
	case h2FrameRSTStream:
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.closeLocked(f.stream)
	}
	return false
}

// closeLocked ends stream id, counting it premature when it is, and
// reports whether the connection has now reset too many.
func (g *h2Guard) closeLocked(id uint32) bool {
	s := g.open[id]
	if s == nil {
		return false
	}
	delete(g.open, id)
	g.closed++
	if !s.responded && g.now().Sub(s.opened) < prematureResetLifetime {
		g.premature++
	}
	if g.tripped {
		return false
	}
	limit := PrematureResetTotalStreams
	if g.closed >= limit {
		limit = g.closed
	}
	if g.premature*2 < limit {
		return false
	}
	g.tripped = true
	return true
}

// outbound inspects bytes the server writes. The caller holds the
// connection's write lock.
func (g *h2Guard) outbound(p []byte) {
	if g.mode != modeHTTP2 {
		return
	}
	for n := 0; n < len(p); {
		if g.capturing {
			k := min(g.out.remain, uint32(len(p)-n))
			g.capture = append(g.capture, p[n:n+int(k)]...)
			if k == g.out.remain {
				g.captured()
			}
		}
		f, used, ok := g.out.next(p[n:])
		n += used
		if !ok {
			break
		}
		switch {
		case f.typ == h2FrameData && f.length == uint32(len(go431HTTP2)),
			f.typ == h2FrameGoAway && f.length >= 8 && f.length <= 8+64:
			g.capturing, g.captureOf, g.capture = true, f.typ, g.capture[:0]
			if f.length == 0 {
				g.captured()
			}
		}
		switch f.typ {
		case h2FrameHeaders, h2FrameData, h2FrameRSTStream:
		default:
			continue
		}
		g.mu.Lock()
		if s := g.open[f.stream]; s != nil {
			if f.typ == h2FrameHeaders {
				s.responded = true
			}
			if f.typ == h2FrameRSTStream || f.flags&h2FlagEndStream != 0 {
				g.closeLocked(f.stream)
			}
		}
		g.mu.Unlock()
	}
}

// captured looks at a payload kept whole.
func (g *h2Guard) captured() {
	switch g.captureOf {
	case h2FrameData:
		if string(g.capture) == go431HTTP2 && g.onTooLarge != nil {
			g.onTooLarge()
		}
	case h2FrameGoAway:
		if g.onGoAway != nil {
			g.onGoAway(binary.BigEndian.Uint32(g.capture[4:8]))
		}
	}
	g.capturing = false
}

// outboundBoundary reports whether the server's writes are between frames,
// where the guard's own GOAWAY may go. The caller holds the write lock.
func (g *h2Guard) outboundBoundary() bool { return g.out.atBoundary() }

// lastStream is the highest stream the server saw opened.
func (g *h2Guard) lastStream() uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last
}

// goAwayFrame is a GOAWAY frame: the last stream the server processes,
// ENHANCE_YOUR_CALM, and Envoy's reason as debug data.
func goAwayFrame(last uint32) []byte {
	payload := 8 + len(goAwayDebugResets)
	b := make([]byte, h2FrameHeaderLen+payload)
	b[0], b[1], b[2] = byte(payload>>16), byte(payload>>8), byte(payload)
	b[3] = h2FrameGoAway
	binary.BigEndian.PutUint32(b[9:], last&(1<<31-1))
	binary.BigEndian.PutUint32(b[13:], h2ErrEnhanceCalm)
	copy(b[17:], goAwayDebugResets)
	return b
}
