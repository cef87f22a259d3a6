package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/meshgate/meshgate/sidecar"
)

// The conditions of the gateway's /ready (admin.Readiness).
var (
	errNotListening = errors.New("the listeners are not open yet")
	errNoView       = errors.New("no view has loaded yet (with -consul: the agent has not answered yet)")
	errDraining     = errors.New("draining: SIGINT or SIGTERM started the shutdown")
)

// viewReady is the "view" condition: a view has loaded and is usable.
func (g *gatewayMetrics) viewReady() error {
	src := g.src.Load()
	if src == nil {
		return errNoView
	}
	v := (*src).View()
	if v == nil {
		return errNoView
	}
	return v.Validate()
}

// certificateReady returns the "certificate" condition of a terminator's
// certificates: one is held, and it is valid now.
func certificateReady(certs *sidecar.Certs) func() error {
	return func() error {
		c := certs.Certificate()
		if c == nil || len(c.Certificate) == 0 {
			if err := certs.Err(); err != nil {
				return fmt.Errorf("no certificate from the agent yet: %w", err)
			}
			return errors.New("no certificate from the agent yet")
		}
		leaf := c.Leaf
		if leaf == nil {
			var err error
			if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
				return fmt.Errorf("the certificate held does not parse: %w", err)
			}
		}
		now := time.Now()
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			return fmt.Errorf("the certificate held is valid from %s to %s only", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		return nil
	}
}
