package sni

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/crypto/cryptobyte"
)

// TLS constants used by the parser (RFC 8446, RFC 6066, RFC 7301, RFC 9849).
const (
	recordTypeHandshake     = 22
	recordHeaderLen         = 5
	handshakeHeaderLen      = 4
	typeClientHello         = 1
	maxPlaintextRecord      = 16384 // RFC 8446 section 5.1: 2^14
	extServerName           = 0
	extALPN                 = 16
	extSupportedVersions    = 43
	extEncryptedClientHello = 0xfe0d
	nameTypeHostName        = 0
)

// Errors a caller can branch on with errors.Is. Each returned error wraps one
// of them together with the offending value.
var (
	// ErrNotTLS means the first bytes are not a TLS handshake record: plain
	// HTTP, an SSLv2-compatible hello, or anything else.
	ErrNotTLS = errors.New("sni: not a TLS handshake")
	// ErrMalformed means the bytes start like TLS but the records or the
	// ClientHello in them break the protocol.
	ErrMalformed = errors.New("sni: malformed ClientHello")
	// ErrInvalidServerName means the ClientHello is well formed but its
	// server_name breaks the policy described on ClientHello.ServerName.
	ErrInvalidServerName = errors.New("sni: invalid server name")
	// ErrTooLarge means the ClientHello is larger than the configured maximum.
	ErrTooLarge = errors.New("sni: ClientHello too large")
	// ErrTimeout means the ClientHello did not arrive before the deadline.
	ErrTimeout = errors.New("sni: timed out reading ClientHello")
)

// ClientHello is what a gateway needs to know of a TLS ClientHello. Parsing
// reuses the storage of the ClientHello it fills, so a ClientHello kept for
// the next connection makes parsing free of allocations when the names
// repeat; its slices are then overwritten, so whoever keeps a hello past the
// next parse into it keeps a Clone.
type ClientHello struct {
	// ServerName is the host_name of the server_name extension, or "" when
	// the client sent none. Policy: ASCII letters are lower-cased (DNS names
	// are case-insensitive and Consul builds lower-case names); the name must
	// be dot-separated non-empty labels of letters, digits, '-' and '_'.
	// A trailing dot, an IP literal, more than one host_name, or any other
	// character is rejected with ErrInvalidServerName (RFC 6066 section 3),
	// so a router sees exactly the name the TLS server will. Entries of
	// unknown name types are ignored.
	ServerName string
	// ALPN lists the protocols of the application_layer_protocol_negotiation
	// extension in the client's order.
	ALPN []string
	// SupportedVersions lists the supported_versions extension's versions
	// (0x0304 is TLS 1.3) without GREASE values; empty when the extension is
	// absent, as for clients that only speak TLS 1.2 or older.
	SupportedVersions []uint16
	// LegacyVersion is the ClientHello's legacy_version (client_version) field.
	LegacyVersion uint16
	// ECH reports whether an encrypted_client_hello extension is present. If
	// it is, the real name may be encrypted and ServerName is only the outer,
	// public one. Chromium sends a GREASE ECH extension that looks the same.
	ECH bool
}

// helloBlock is a ClientHello with room for typical lists, so that Clone
// takes one allocation: Chromium, Go and curl send at most 3 ALPN
// protocols and 7 supported versions (GREASE excluded).
type helloBlock struct {
	h        ClientHello
	alpn     [4]string
	versions [8]uint16
}

// Clone returns a copy of h that shares no storage with it, to keep after
// h is parsed into again (a gateway.Server parses every connection into
// pooled ClientHellos and gives its Router a clone). A hello with at most 4
// ALPN protocols and 8 versions takes one allocation.
func (h *ClientHello) Clone() *ClientHello {
	b := new(helloBlock)
	b.h = *h
	b.h.ALPN, b.h.SupportedVersions = nil, nil
	if n := len(h.ALPN); n > len(b.alpn) {
		b.h.ALPN = append([]string(nil), h.ALPN...)
	} else if n > 0 {
		b.h.ALPN = b.alpn[:n:n]
		copy(b.h.ALPN, h.ALPN)
	}
	if n := len(h.SupportedVersions); n > len(b.versions) {
		b.h.SupportedVersions = append([]uint16(nil), h.SupportedVersions...)
	} else if n > 0 {
		b.h.SupportedVersions = b.versions[:n:n]
		copy(b.h.SupportedVersions, h.SupportedVersions)
	}
	return &b.h
}

// MaxVersion returns the highest TLS version the client offers.
func (h *ClientHello) MaxVersion() uint16 {
	v := h.LegacyVersion
	for _, sv := range h.SupportedVersions {
		if sv > v {
			v = sv
		}
	}
	return v
}

// ParseClientHello parses one complete handshake message (its 4-byte header
// included) into h. It is strict like crypto/tls: every length must fit its
// parent, each known extension is read whole and appears at most once, and
// nothing may trail the message. It does not allocate when h already holds the
// same names (see ClientHello). On error, h's fields are unspecified.
func ParseClientHello(msg []byte, h *ClientHello) error {
	s := cryptobyte.String(msg)
	var msgType uint8
	var body cryptobyte.String
	if !s.ReadUint8(&msgType) || !s.ReadUint24LengthPrefixed(&body) {
		return fmt.Errorf("%w: handshake header truncated (%d bytes)", ErrMalformed, len(msg))
	}
	if msgType != typeClientHello {
		return fmt.Errorf("%w: handshake type %d, want ClientHello (1)", ErrMalformed, msgType)
	}
	if !s.Empty() {
		return fmt.Errorf("%w: %d bytes after the ClientHello", ErrMalformed, len(s))
	}

	var sessionID, suites, compression, exts cryptobyte.String
	var legacyVersion uint16
	if !body.ReadUint16(&legacyVersion) || !body.Skip(32) ||
		!body.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) > 32 ||
		!body.ReadUint16LengthPrefixed(&suites) || len(suites) < 2 || len(suites)%2 != 0 ||
		!body.ReadUint8LengthPrefixed(&compression) || len(compression) < 1 {
		return fmt.Errorf("%w: fixed fields truncated or out of range", ErrMalformed)
	}
	h.reset()
	h.LegacyVersion = legacyVersion
	if body.Empty() {
		h.ServerName = ""
		return nil // no extensions: TLS 1.0-1.2 allow it
	}
	if !body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
		return fmt.Errorf("%w: extensions block truncated or followed by data", ErrMalformed)
	}
	var seen uint8 // one bit per extension parsed below
	for len(exts) > 0 {
		// The extension header is read by hand: this loop runs ~20 times per
		// browser hello and dominates parsing. The bounds check is explicit.
		if len(exts) < 4 {
			return fmt.Errorf("%w: extension header truncated", ErrMalformed)
		}
		typ := uint16(exts[0])<<8 | uint16(exts[1])
		n := int(exts[2])<<8 | int(exts[3])
		if len(exts)-4 < n {
			return fmt.Errorf("%w: extension %d length %d exceeds the %d bytes left", ErrMalformed, typ, n, len(exts)-4)
		}
		data := exts[4 : 4+n]
		exts = exts[4+n:]
		var bit uint8
		var err error
		switch typ {
		case extServerName:
			bit, err = 1, h.parseServerName(data)
		case extALPN:
			bit, err = 2, h.parseALPN(data)
		case extSupportedVersions:
			bit, err = 4, h.parseSupportedVersions(data)
		case extEncryptedClientHello:
			bit, h.ECH = 8, true
		default:
			continue
		}
		if seen&bit != 0 {
			return fmt.Errorf("%w: extension %d repeated", ErrMalformed, typ)
		}
		seen |= bit
		if err != nil {
			return err
		}
	}
	if seen&1 == 0 {
		h.ServerName = ""
	}
	return nil
}

func (h *ClientHello) reset() {
	h.LegacyVersion, h.ECH = 0, false
	h.ALPN = h.ALPN[:0]
	h.SupportedVersions = h.SupportedVersions[:0]
	// ServerName is kept until parseServerName so that an equal name is reused.
}

// serverNameSet stores b as ServerName, reusing the current string when equal.
func (h *ClientHello) serverNameSet(b []byte) {
	if string(b) != h.ServerName { // compiles to a comparison, no allocation
		h.ServerName = string(b)
	}
}

func (h *ClientHello) parseServerName(data cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
		return fmt.Errorf("%w: server_name extension malformed", ErrMalformed)
	}
	var host []byte
	for !list.Empty() {
		var nameType uint8
		var name cryptobyte.String
		if !list.ReadUint8(&nameType) || !list.ReadUint16LengthPrefixed(&name) || name.Empty() {
			return fmt.Errorf("%w: server_name entry malformed", ErrMalformed)
		}
		if nameType != nameTypeHostName {
			continue
		}
		if host != nil {
			return fmt.Errorf("%w: more than one host_name (%q and %q)", ErrInvalidServerName, host, []byte(name))
		}
		host = name
	}
	if host == nil {
		h.ServerName = ""
		return nil
	}
	upper, err := checkHostName(host)
	if err != nil {
		return err
	}
	if !upper {
		h.serverNameSet(host)
		return nil
	}
	lower := make([]byte, len(host))
	for i, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	h.serverNameSet(lower)
	return nil
}

// Byte classes of a server name (see ClientHello.ServerName), as bits so the
// scan can OR them together without a branch per byte.
const (
	hostBad   = 1
	hostUpper = 2
	hostDot   = 4
)

var hostByte = func() (t [256]uint8) {
	for i := range t {
		t[i] = hostBad
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = 0
		t[c-'a'+'A'] = hostUpper
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = 0
	}
	t['-'], t['_'], t['.'] = 0, 0, hostDot
	return t
}()

// checkHostName applies the ServerName policy and reports whether the name has
// upper-case letters.
func checkHostName(name []byte) (upper bool, err error) {
	if name[len(name)-1] == '.' {
		return false, fmt.Errorf("%w %q: trailing dot", ErrInvalidServerName, name)
	}
	// One pass, no branch per byte: OR the classes together, and AND each
	// class with the one before it; a dot after a dot (an empty label) leaves
	// the dot bit set. Four bytes a round keeps the CPU's lanes busy.
	var class, pairs uint8
	prev := uint8(hostDot) // a leading dot is an empty label too
	rest := name
	for len(rest) >= 4 {
		c0, c1, c2, c3 := hostByte[rest[0]], hostByte[rest[1]], hostByte[rest[2]], hostByte[rest[3]]
		class |= c0 | c1 | c2 | c3
		pairs |= prev&c0 | c0&c1 | c1&c2 | c2&c3
		prev = c3
		rest = rest[4:]
	}
	for _, c := range rest {
		cls := hostByte[c]
		class |= cls
		pairs |= prev & cls
		prev = cls
	}
	emptyLabel := pairs & hostDot
	if class&hostBad != 0 {
		for _, c := range name {
			if hostByte[c]&hostBad != 0 {
				return false, fmt.Errorf("%w %q: byte %#02x is not allowed in a host name", ErrInvalidServerName, name, c)
			}
		}
	}
	if emptyLabel != 0 {
		return false, fmt.Errorf("%w %q: empty label", ErrInvalidServerName, name)
	}
	if name[0] >= '0' && name[0] <= '9' {
		if _, err := netip.ParseAddr(string(name)); err == nil {
			return false, fmt.Errorf("%w %q: IP literals are not permitted", ErrInvalidServerName, name)
		}
	}
	return class&hostUpper != 0, nil
}

func (h *ClientHello) parseALPN(data cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
		return fmt.Errorf("%w: ALPN extension malformed", ErrMalformed)
	}
	old := h.ALPN[:cap(h.ALPN)]
	for i := 0; !list.Empty(); i++ {
		var proto cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&proto) || proto.Empty() {
			return fmt.Errorf("%w: ALPN protocol name empty or truncated", ErrMalformed)
		}
		if i < len(old) && old[i] == string(proto) {
			h.ALPN = append(h.ALPN, old[i])
		} else {
			h.ALPN = append(h.ALPN, string(proto))
		}
	}
	return nil
}

func (h *ClientHello) parseSupportedVersions(data cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 || !data.Empty() {
		return fmt.Errorf("%w: supported_versions extension malformed", ErrMalformed)
	}
	for !list.Empty() {
		var v uint16
		list.ReadUint16(&v)
		if isGREASE(v) {
			continue
		}
		h.SupportedVersions = append(h.SupportedVersions, v)
	}
	return nil
}

// isGREASE reports whether v is one of RFC 8701's reserved values 0x?a?a.
func isGREASE(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }
