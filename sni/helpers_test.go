package sni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// corpusEntry is one captured ClientHello (see tools/capturehellos).
type corpusEntry struct {
	File       string   `json:"file"`
	Client     string   `json:"client"`
	ServerName string   `json:"server_name"`
	ALPN       []string `json:"alpn"`
	bytes      []byte
}

func loadCorpus(tb testing.TB) []corpusEntry {
	tb.Helper()
	dir := filepath.Join("testdata", "hellos")
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var entries []corpusEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		tb.Fatal(err)
	}
	if len(entries) < 6 {
		tb.Fatalf("corpus has %d entries, want the real clients of capturehellos", len(entries))
	}
	for i := range entries {
		entries[i].bytes, err = os.ReadFile(filepath.Join(dir, entries[i].File))
		if err != nil {
			tb.Fatal(err)
		}
	}
	return entries
}

// resplit re-frames the handshake carried in the TLS records of raw into
// records of at most size bytes each.
func resplit(tb testing.TB, raw []byte, size int) []byte {
	tb.Helper()
	var hs []byte
	version := raw[1:3]
	for len(raw) > 0 {
		n := int(raw[3])<<8 | int(raw[4])
		hs = append(hs, raw[5:5+n]...)
		raw = raw[5+n:]
	}
	var out []byte
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, recordTypeHandshake, version[0], version[1], byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

// helloSpec describes a synthetic ClientHello for the error cases.
type helloSpec struct {
	names      [][]byte // host_name entries; nil: no server_name extension
	otherNames bool     // add an entry of an unknown name type
	alpn       []string
	versions   []uint16
	ech        bool
	dupSNI     bool
	padTo      int // add a padding extension so the message reaches this size
}

func buildHello(s helloSpec) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0x1301); b.AddUint16(0xc02f) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			sni := func() {
				b.AddUint16(extServerName)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						if s.otherNames {
							b.AddUint8(7)
							b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("other")) })
						}
						for _, n := range s.names {
							b.AddUint8(nameTypeHostName)
							b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(n) })
						}
					})
				})
			}
			if s.names != nil || s.otherNames {
				sni()
				if s.dupSNI {
					sni()
				}
			}
			if s.alpn != nil {
				b.AddUint16(extALPN)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, p := range s.alpn {
							b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
						}
					})
				})
			}
			if s.versions != nil {
				b.AddUint16(extSupportedVersions)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, v := range s.versions {
							b.AddUint16(v)
						}
					})
				})
			}
			if s.ech {
				b.AddUint16(extEncryptedClientHello)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte{0, 1, 2, 3}) })
			}
			if s.padTo > 0 {
				b.AddUint16(21) // padding
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, s.padTo)) })
			}
		})
	})
	return b.BytesOrPanic()
}

// recordsOf frames a handshake message into records of at most size bytes.
func recordsOf(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// trickleConn hands out its bytes chunk bytes per Read, then io.EOF.
type trickleConn struct {
	data     []byte
	chunk    int
	reads    int
	deadline time.Time
}

func (c *trickleConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, errEOF
	}
	c.reads++
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *trickleConn) SetReadDeadline(t time.Time) error { c.deadline = t; return nil }
