// Package agenterr sorts a Consul agent's failed answers into the two that
// a gateway acts on, for consulview and registration alike: the request was
// denied (the token lacks a permission), or the agent did not answer.
package agenterr

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ErrPermissionDenied wraps Consul's 403 answers (consulview's and
// registration's ErrPermissionDenied are this error).
var ErrPermissionDenied = errors.New("the Consul agent denied the request")

// ErrAgentUnreachable wraps a failed request to an agent that does not
// answer (consulview's and registration's ErrAgentUnreachable are this
// error).
var ErrAgentUnreachable = errors.New("the Consul agent is unreachable")

// Classify wraps err, the failure of what, as ErrPermissionDenied (naming
// what a gateway's token needs) or ErrAgentUnreachable where it is one of
// those; every message starts with prefix, the calling package's name.
func Classify(prefix, what string, err error) error {
	var se api.StatusError
	msg := err.Error()
	// Consul's answer reads "Unexpected response code: 403 (Permission
	// denied ...)"; a bare "403" could be part of an address.
	if errors.As(err, &se) && se.Code == 403 || strings.Contains(msg, "response code: 403") || strings.Contains(msg, "Permission denied") {
		return fmt.Errorf("%s: %w while %s: a mesh gateway's token needs service:read on all services and node:read (and service:write on its own name to register itself): %v", prefix, ErrPermissionDenied, what, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) || strings.Contains(msg, "connection refused") {
		return fmt.Errorf("%s: %w while %s: %v", prefix, ErrAgentUnreachable, what, err)
	}
	return fmt.Errorf("%s: %s: %w", prefix, what, err)
}
