package sni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Defaults for a zero Reader, the same as Envoy's under Consul.
const (
	// DefaultMaxSize bounds a ClientHello handshake message (64 KiB).
	DefaultMaxSize = 64 << 10
	// DefaultTimeout bounds how long reading a ClientHello may take (15 s,
	// Envoy's listener-filter timeout).
	DefaultTimeout = 15 * time.Second
)

// Reader reads a TLS ClientHello off a connection without consuming it: it
// returns every byte it read so the caller can forward them unchanged, and it
// never decrypts anything. It reassembles a handshake message split over
// several TLS records and over any number of reads.
//
// The zero Reader is ready to use with the defaults above.
type Reader struct {
	// MaxSize bounds the ClientHello handshake message, header included.
	// Zero means DefaultMaxSize. The record framing around it may add at most
	// MaxSize bytes again (a hello split into tiny records); past either bound
	// Read fails with ErrTooLarge.
	MaxSize int
	// Timeout bounds the whole read, on top of the context's deadline. Zero
	// means DefaultTimeout; negative means only the context bounds it.
	Timeout time.Duration
}

// Conn is what Reader.Read needs of a connection; a net.Conn satisfies it.
type Conn interface {
	io.Reader
	SetReadDeadline(t time.Time) error
}

var reassemblyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Read reads from conn until one whole ClientHello has arrived and parses it
// into h. It appends every byte read to buf (growing it as needed) and returns
// the result, also on error, so that nothing read is lost; bytes that followed
// the ClientHello in the same read are included. Read sets a read deadline on
// conn for the duration of the call and clears it before returning; cancelling
// ctx interrupts it.
//
// Errors wrap ErrNotTLS, ErrMalformed, ErrInvalidServerName, ErrTooLarge or
// ErrTimeout; a connection closed before any byte wraps io.EOF, and one closed
// part way wraps io.ErrUnexpectedEOF. When ctx ends first, the error also
// wraps ctx.Err().
func (r Reader) Read(ctx context.Context, conn Conn, buf []byte, h *ClientHello) ([]byte, error) {
	maxSize := r.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	timeout := r.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	if err := ctx.Err(); err != nil {
		return buf, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return buf, fmt.Errorf("sni: setting read deadline: %w", err)
	}
	defer conn.SetReadDeadline(time.Time{})
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}

	p := parser{maxSize: maxSize, start: len(buf)}
	defer p.release()
	data := buf
	for {
		msg, need, err := p.advance(data)
		if err != nil {
			return data, err
		}
		if msg != nil {
			return data, ParseClientHello(msg, h)
		}
		if need-p.start > 2*maxSize {
			return data, fmt.Errorf("%w: record framing exceeds %d bytes", ErrTooLarge, 2*maxSize)
		}
		if cap(data) < need {
			grown := make([]byte, len(data), max(need, min(2*cap(data), p.start+2*maxSize)))
			copy(grown, data)
			data = grown
		}
		n, err := io.ReadAtLeast(conn, data[len(data):cap(data)], need-len(data))
		data = data[:len(data)+n]
		if err != nil {
			if n > 0 && err == io.ErrUnexpectedEOF {
				// Parse what did arrive first: it may already say "not TLS".
				if _, _, perr := p.advance(data); perr != nil {
					return data, perr
				}
			}
			return data, p.readError(ctx, err, len(data)-p.start)
		}
	}
}

func (p *parser) readError(ctx context.Context, err error, got int) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, got, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, got, err)
	case got == 0 && err == io.EOF:
		return fmt.Errorf("sni: connection closed before any byte: %w", io.EOF)
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return fmt.Errorf("sni: connection closed after %d bytes, before the ClientHello was complete: %w", got, io.ErrUnexpectedEOF)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, got, err)
	}
	return fmt.Errorf("sni: reading ClientHello: %w", err)
}

// parser walks TLS records as they arrive. It keeps its place between calls so
// each byte is looked at once.
type parser struct {
	maxSize int
	start   int     // where the connection's bytes start in data
	off     int     // next record header, relative to data
	msgLen  int     // handshake message length incl. header, 0 until known
	reasm   *[]byte // fragments of a message that spans records
	records int
}

func (p *parser) release() {
	if p.reasm != nil {
		*p.reasm = (*p.reasm)[:0]
		reassemblyPool.Put(p.reasm)
		p.reasm = nil
	}
}

// advance consumes the whole records in data. It returns the complete
// handshake message once it is there, or how many bytes data must hold before
// advance can make progress.
func (p *parser) advance(data []byte) (msg []byte, need int, err error) {
	if p.records == 0 {
		p.off = p.start
		if err := sniffTLS(data[p.start:]); err != nil {
			return nil, 0, err
		}
	}
	for {
		if len(data)-p.off < recordHeaderLen {
			return nil, p.off + recordHeaderLen, nil
		}
		hdr := data[p.off : p.off+recordHeaderLen]
		if hdr[0] != recordTypeHandshake {
			return nil, 0, fmt.Errorf("%w: record %d has content type %d before the ClientHello was complete", ErrMalformed, p.records+1, hdr[0])
		}
		if hdr[1] != 3 || hdr[2] > 4 {
			return nil, 0, fmt.Errorf("%w: record %d has version %#02x%02x", ErrMalformed, p.records+1, hdr[1], hdr[2])
		}
		n := int(hdr[3])<<8 | int(hdr[4])
		if n == 0 || n > maxPlaintextRecord {
			return nil, 0, fmt.Errorf("%w: record %d length %d, want 1 to %d", ErrMalformed, p.records+1, n, maxPlaintextRecord)
		}
		end := p.off + recordHeaderLen + n
		if len(data) < end {
			return nil, end, nil
		}
		frag := data[p.off+recordHeaderLen : end]
		p.off = end
		p.records++

		if p.records == 1 && len(frag) >= handshakeHeaderLen {
			if err := p.setMsgLen(frag); err != nil {
				return nil, 0, err
			}
			if len(frag) >= p.msgLen {
				if len(frag) > p.msgLen {
					return nil, 0, fmt.Errorf("%w: %d bytes after the ClientHello in its record", ErrMalformed, len(frag)-p.msgLen)
				}
				return frag, 0, nil // the common case: one record, no copy
			}
		}
		if p.reasm == nil {
			p.reasm = reassemblyPool.Get().(*[]byte)
		}
		*p.reasm = append(*p.reasm, frag...)
		r := *p.reasm
		if p.msgLen == 0 && len(r) >= handshakeHeaderLen {
			if err := p.setMsgLen(r); err != nil {
				return nil, 0, err
			}
		}
		if p.msgLen > 0 && len(r) >= p.msgLen {
			if len(r) > p.msgLen {
				return nil, 0, fmt.Errorf("%w: %d bytes after the ClientHello in its last record", ErrMalformed, len(r)-p.msgLen)
			}
			return r, 0, nil
		}
	}
}

func (p *parser) setMsgLen(hs []byte) error {
	if hs[0] != typeClientHello {
		return fmt.Errorf("%w: handshake type %d, want ClientHello (1)", ErrMalformed, hs[0])
	}
	p.msgLen = handshakeHeaderLen + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
	if p.msgLen > p.maxSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, p.msgLen, p.maxSize)
	}
	return nil
}

// sniffTLS rejects, from as few bytes as have arrived, a stream that cannot
// be a TLS handshake, so that plain text is refused without waiting for more.
func sniffTLS(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	switch {
	case b[0] == recordTypeHandshake:
	case b[0]&0x80 != 0:
		return fmt.Errorf("%w: first byte %#02x (an SSLv2-compatible ClientHello?)", ErrNotTLS, b[0])
	case isPrintable(b[0]):
		return fmt.Errorf("%w: starts with text %q (plain HTTP?)", ErrNotTLS, b[:min(len(b), 16)])
	default:
		return fmt.Errorf("%w: first byte %#02x is not a handshake record", ErrNotTLS, b[0])
	}
	if len(b) >= 2 && b[1] != 3 {
		return fmt.Errorf("%w: record version major %d, want 3", ErrNotTLS, b[1])
	}
	return nil
}

func isPrintable(c byte) bool { return c >= 0x20 && c < 0x7f }

// Gatherer collects a ClientHello from bytes as they arrive, for an event
// loop that reads sockets without blocking and so cannot use Reader. It
// checks each byte once, as Reader does, with the same limits and errors.
// The zero Gatherer is ready, with DefaultMaxSize; reset it with Reset
// before using it for another connection.
type Gatherer struct {
	// MaxSize bounds the ClientHello as Reader.MaxSize does.
	MaxSize int
	p       parser
	started bool
}

// Next examines data, every byte the connection has sent so far, and
// returns the whole ClientHello handshake message once it is there (to
// parse with ParseClientHello; it points into data or into the Gatherer's
// own buffer, valid until Reset), or else need, how many bytes data must
// hold before Next can say more. Errors wrap ErrNotTLS, ErrMalformed or
// ErrTooLarge.
func (g *Gatherer) Next(data []byte) (msg []byte, need int, err error) {
	if !g.started {
		g.started = true
		g.p = parser{maxSize: g.MaxSize}
		if g.p.maxSize <= 0 {
			g.p.maxSize = DefaultMaxSize
		}
	}
	msg, need, err = g.p.advance(data)
	if err == nil && msg == nil && need > 2*g.p.maxSize {
		err = fmt.Errorf("%w: record framing exceeds %d bytes", ErrTooLarge, 2*g.p.maxSize)
	}
	return msg, need, err
}

// Closed returns the error Reader.Read gives when the connection ends
// (read returns 0) after sending data, before its ClientHello was whole: it
// wraps io.EOF when nothing came, else io.ErrUnexpectedEOF, or the error
// that what did come already shows.
func (g *Gatherer) Closed(data []byte) error {
	if len(data) > 0 {
		if _, _, err := g.Next(data); err != nil {
			return err
		}
	}
	return g.p.readError(context.Background(), io.EOF, len(data))
}

// Reset makes g ready for another connection and gives back the buffer a
// message spread over several records was reassembled in.
func (g *Gatherer) Reset() {
	g.p.release()
	*g = Gatherer{MaxSize: g.MaxSize}
}
