package consulview

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
)

// An Authorizer says whether the client's token may do something, without
// trying it: a denied request costs the operator an error line in the
// agent's log each time ("Request error ... Permission denied"), and a
// Source that only wants to know whether to follow something asks here
// first.
type Authorizer interface {
	// Allowed reports whether the token has access ("read", "write") to
	// resource ("peering", "mesh", "service", ...) and segment (a name;
	// empty for the resources that have none). An agent without ACLs
	// allows everything.
	Allowed(ctx context.Context, resource, access, segment string) (bool, error)
}

// TokenAuthorizer returns the Authorizer of cfg's token, asked at cfg's
// agent with POST /v1/internal/acl/authorize, which any token may ask about
// itself (consul/api has no method for it). cfg is the configuration a
// client is made with (api.DefaultConfig and what the program sets over
// it); TokenAuthorizer reads it and never changes it.
func TokenAuthorizer(cfg *api.Config) Authorizer {
	return tokenAuthorizer{cfg: cfg}
}

type tokenAuthorizer struct{ cfg *api.Config }

// authorizeRequest and authorizeAnswer are what the endpoint takes and
// answers (Consul's structs.ACLAuthorizationRequest and Response).
type authorizeRequest struct {
	Resource string
	Segment  string `json:",omitempty"`
	Access   string
}

type authorizeAnswer struct {
	authorizeRequest
	Allow bool
}

func (a tokenAuthorizer) Allowed(ctx context.Context, resource, access, segment string) (bool, error) {
	const path = "/v1/internal/acl/authorize"
	def := api.DefaultConfig()
	cfg := *a.cfg
	if cfg.Address == "" {
		cfg.Address = def.Address
	}
	if cfg.Scheme == "" {
		cfg.Scheme = def.Scheme
	}
	if scheme, addr, ok := strings.Cut(cfg.Address, "://"); ok {
		if scheme == "unix" {
			return false, fmt.Errorf("consulview: asking %s over a unix socket is not supported", path)
		}
		cfg.Scheme, cfg.Address = scheme, addr
	}
	// The environment's TLS settings where cfg has none, as api.NewClient
	// fills them.
	t, d := &cfg.TLSConfig, def.TLSConfig
	for _, f := range []struct {
		to   *string
		from string
	}{{&t.Address, d.Address}, {&t.CAFile, d.CAFile}, {&t.CAPath, d.CAPath},
		{&t.CertFile, d.CertFile}, {&t.KeyFile, d.KeyFile}} {
		if *f.to == "" {
			*f.to = f.from
		}
	}
	t.InsecureSkipVerify = t.InsecureSkipVerify || d.InsecureSkipVerify
	hc := cfg.HttpClient
	if hc == nil {
		transport := cfg.Transport
		if transport == nil {
			transport = def.Transport
		}
		var err error
		if hc, err = api.NewHttpClient(transport, cfg.TLSConfig); err != nil {
			return false, fmt.Errorf("consulview: %s: %w", path, err)
		}
	}
	token := cfg.Token
	if token == "" && cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return false, fmt.Errorf("consulview: reading the token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		token = def.Token
	}
	q := url.Values{}
	if cfg.Namespace != "" {
		q.Set("ns", cfg.Namespace)
	}
	if cfg.Partition != "" {
		q.Set("partition", cfg.Partition)
	}
	u := url.URL{Scheme: cfg.Scheme, Host: cfg.Address, Path: path, RawQuery: q.Encode()}
	body, err := json.Marshal([]authorizeRequest{{Resource: resource, Segment: segment, Access: access}})
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("consulview: %s: %w", path, err)
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, fmt.Errorf("consulview: POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	switch {
	case resp.StatusCode == http.StatusUnauthorized && strings.Contains(buf.String(), "ACL support disabled"):
		return true, nil
	case resp.StatusCode != http.StatusOK:
		return false, fmt.Errorf("consulview: POST %s: %s: %s", path, resp.Status, strings.TrimSpace(buf.String()))
	}
	var answers []authorizeAnswer
	if err := json.Unmarshal(buf.Bytes(), &answers); err != nil {
		return false, fmt.Errorf("consulview: POST %s: %w", path, err)
	}
	if len(answers) != 1 {
		return false, errors.New("consulview: POST " + path + ": not one answer")
	}
	return answers[0].Allow, nil
}
