// Package fipsmode says, in the error of a TLS handshake that failed while
// Go's FIPS 140-3 mode is enforced (GODEBUG=fips140=only, in a binary built
// with GOFIPS140), what that mode forbids: the likely cause when the other
// side is not a Go program in the same mode.
package fipsmode

import (
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"io"
	"net"
)

// Allowed is what Go's FIPS 140-3 mode allows a TLS handshake (Go 1.26's
// crypto/tls under fips140=only).
const Allowed = "TLS 1.2 and 1.3; key exchange X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024, P-256, P-384 or P-521 (not X25519 alone); " +
	"AES-GCM cipher suites (not ChaCha20-Poly1305); certificates with RSA keys of 2048 bits or more, ECDSA P-256, P-384 or P-521, or Ed25519 keys; no SHA-1 signatures"

// Explain returns err, naming what FIPS 140-3 mode forbids when the mode is
// enforced and err is a handshake's failure rather than the connection's
// (a timeout, a close); otherwise err itself. Nil stays nil.
func Explain(err error) error {
	if err == nil || !fips140.Enforced() {
		return err
	}
	var ne net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return err
	}
	return fmt.Errorf("%w (FIPS 140-3 mode, GODEBUG=fips140=only, allows only %s)", err, Allowed)
}
