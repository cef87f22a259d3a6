// Package agenterr sorts a Consul agent's failed answers into those a
// gateway acts on, for consulview, registration and gatewaycert alike: the
// request was denied, or its answer filtered, for want of a permission (a
// PermissionError naming the endpoint and the rule to add); the agent is a
// Consul CE agent asked for an Enterprise feature; or the agent did not
// answer. Tokens are never in these errors (Consul's own words name a
// token by its AccessorID, which is no secret).
package agenterr

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ErrPermissionDenied wraps Consul's 403 answers and answers it filtered
// by ACLs (consulview's and registration's ErrPermissionDenied are this
// error); errors.As finds the *PermissionError.
var ErrPermissionDenied = errors.New("the Consul agent denied the request")

// ErrAgentUnreachable wraps a failed request to an agent that does not
// answer (consulview's and registration's ErrAgentUnreachable are this
// error).
var ErrAgentUnreachable = errors.New("the Consul agent is unreachable")

// ErrEnterpriseOnly wraps a Consul CE agent's refusal of a namespace or a
// partition (CONSUL_NAMESPACE, -namespace, CONSUL_PARTITION, -partition):
// those are Consul Enterprise features.
var ErrEnterpriseOnly = errors.New("the Consul agent is Consul CE, which has no namespaces or partitions")

// Rule is an ACL rule in Consul's rule language, such as
// `peering = "read"` or `service_prefix "" { policy = "read" }`: what an
// operator adds to a token's policy.
type Rule string

// The rules a mesh gateway's requests need.
const (
	// ReadServices and ReadNodes are in the token Consul documents for a
	// mesh gateway: it reads every service and node.
	ReadServices Rule = `service_prefix "" { policy = "read" }`
	ReadNodes    Rule = `node_prefix "" { policy = "read" }`
	// ReadPeerings lets a token list the cluster's peerings.
	ReadPeerings Rule = `peering = "read"`
	// WriteMesh lets the agent sign a mesh gateway's own certificate.
	WriteMesh Rule = `mesh = "write"`
	// ReadAgents lets a token read an agent's own configuration.
	ReadAgents Rule = `agent_prefix "" { policy = "read" }`
)

// WriteService is the rule that lets a token register service name.
func WriteService(name string) Rule {
	return Rule(fmt.Sprintf("service %q { policy = \"write\" }", name))
}

// Call is one request to the agent, as errors name it.
type Call struct {
	// What says what the request is for: "listing peerings".
	What string
	// Endpoint is its method and path: "GET /v1/peerings".
	Endpoint string
	// Rules are what a token needs for it, for when Consul's answer names
	// nothing (an answer filtered by ACLs); none for a request that needs
	// no permission.
	Rules []Rule
}

// PermissionError is a request the agent denied (403), or answered with
// results its ACLs filtered out: which request, and the rule to add to the
// token's policy.
type PermissionError struct {
	// Prefix is the reporting package's name.
	Prefix string
	Call
	// Need is the rule to add: the one that grants what Consul's answer
	// says the token lacks, else Call.Rules.
	Need []Rule
	// Consul is Consul's answer; empty when it filtered the results.
	Consul string
}

func (e *PermissionError) Error() string {
	need := make([]string, len(e.Need))
	for i, r := range e.Need {
		need[i] = string(r)
	}
	verb := "denied"
	if e.Consul == "" {
		verb = "filtered by ACLs the answer to"
	}
	s := fmt.Sprintf("%s: the Consul agent %s %s (%s)", e.Prefix, verb, e.Endpoint, e.What)
	if len(need) > 0 {
		s += ": add " + strings.Join(need, " and ") + " to the token's policy"
	}
	if e.Consul != "" {
		s += " (Consul: " + e.Consul + ")"
	}
	return s
}

// Unwrap returns ErrPermissionDenied.
func (e *PermissionError) Unwrap() error { return ErrPermissionDenied }

// Classify wraps err, the failure of call, as a *PermissionError, as
// ErrEnterpriseOnly or as ErrAgentUnreachable where it is one of those;
// every message starts with prefix, the calling package's name.
func Classify(prefix string, call Call, err error) error {
	var se api.StatusError
	msg := err.Error()
	// Consul's answer reads "Unexpected response code: 403 (Permission
	// denied ...)"; a bare "403" could be part of an address.
	if errors.As(err, &se) && se.Code == 403 || strings.Contains(msg, "response code: 403") || strings.Contains(msg, "Permission denied") {
		consul := msg
		if se.Body != "" {
			consul = se.Body
		} else if _, after, ok := strings.Cut(msg, "response code: 403 ("); ok {
			consul = strings.TrimSuffix(after, ")")
		}
		need := call.Rules
		if r := ruleOf(consul); r != "" {
			need = []Rule{r}
		}
		return &PermissionError{Prefix: prefix, Call: call, Need: need, Consul: strings.TrimSpace(consul)}
	}
	if strings.Contains(msg, "is a Consul Enterprise feature") || strings.Contains(msg, "are a Consul Enterprise feature") {
		return fmt.Errorf("%s: %w: %s (%s): %v", prefix, ErrEnterpriseOnly, call.Endpoint, call.What, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) || strings.Contains(msg, "connection refused") {
		return fmt.Errorf("%s: %w while %s (%s): %v", prefix, ErrAgentUnreachable, call.What, call.Endpoint, err)
	}
	return fmt.Errorf("%s: %s (%s): %w", prefix, call.What, call.Endpoint, err)
}

// Filtered returns a *PermissionError when Consul filtered the answer to
// call by ACLs (meta.ResultsFilteredByACLs), else nil: a gateway that saw
// only part of the mesh would route wrongly.
func Filtered(prefix string, call Call, meta *api.QueryMeta) error {
	if meta == nil || !meta.ResultsFilteredByACLs {
		return nil
	}
	return &PermissionError{Prefix: prefix, Call: call, Need: call.Rules}
}

// lacks matches the permission a 403 of Consul's names: "lacks permission
// 'service:read' on \"api\"" or "lacks permission 'peering:read'".
var lacks = regexp.MustCompile(`lacks permission '([a-z_]+):([a-z]+)'(?: on "([^"]*)")?`)

// ruleOf returns the rule that grants the permission Consul's message msg
// says the token lacks, or "" when it names none. Reads of services and
// nodes are granted for every name, as a gateway reads them all.
func ruleOf(msg string) Rule {
	m := lacks.FindStringSubmatch(msg)
	if m == nil {
		return ""
	}
	resource, access, segment := m[1], m[2], m[3]
	switch resource {
	case "acl", "keyring", "mesh", "operator", "peering":
		return Rule(fmt.Sprintf("%s = %q", resource, access))
	}
	if segment == "" || access == "read" && (resource == "service" || resource == "node") {
		return Rule(fmt.Sprintf("%s_prefix \"\" { policy = %q }", resource, access))
	}
	return Rule(fmt.Sprintf("%s %q { policy = %q }", resource, segment, access))
}
