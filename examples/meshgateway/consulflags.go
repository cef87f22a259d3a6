package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/internal/agenterr"
)

// defaultGRPCAddr is where the gateway reads its certificate when neither
// -grpc-addr nor CONSUL_GRPC_ADDR says: the agent's gRPC TLS port
// (ports.grpc_tls, 8503 by convention), which production agents open where
// they close the plaintext one (ports.grpc = -1). Consul's command asks
// /v1/agent/self instead (agent:read, which a gateway's token lacks) and
// falls back to plaintext localhost:8502; meshgate speaks plaintext only
// when pointed at it.
const defaultGRPCAddr = "https://127.0.0.1:8503"

// agentFlags are consul connect envoy's flags that say how to reach the
// agent, each over the CONSUL_* variable api.DefaultConfig reads (as
// Consul's HTTPFlags.MergeOntoConfig merges them). Their defaults are
// empty so that -help never prints a token from the environment.
type agentFlags struct {
	httpAddr, token, tokenFile, namespace, partition     string
	caFile, caPath, clientCert, clientKey, tlsServerName string
	grpcAddr, grpcCAFile, grpcCAPath                     string
}

// names are the flags that need -consul (-grpc-* go with -l7-exports
// terminate, which needs it too).
func (f *agentFlags) names() []string {
	return []string{"http-addr", "token", "token-file", "namespace", "partition", "ca-file", "ca-path", "client-cert", "client-key", "tls-server-name"}
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.httpAddr, "http-addr", "", "with -consul: the agent's HTTP API, http://host:port, https://host:port or unix:///path (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	fs.StringVar(&f.token, "token", "", "with -consul: the ACL token (default: CONSUL_HTTP_TOKEN); never printed")
	fs.StringVar(&f.tokenFile, "token-file", "", "with -consul: a file holding the ACL token, read at start (default: CONSUL_HTTP_TOKEN_FILE); it wins over -token, as in Consul's commands")
	fs.StringVar(&f.namespace, "namespace", "", "with -consul: the Consul Enterprise namespace of the gateway and of every request (default: CONSUL_NAMESPACE; Consul CE refuses any)")
	fs.StringVar(&f.partition, "partition", "", "with -consul: the Consul Enterprise admin partition of the gateway and of every request (default: CONSUL_PARTITION; Consul CE refuses any)")
	fs.StringVar(&f.caFile, "ca-file", "", "with -consul: the CA file that verifies the agent's HTTPS certificate (default: CONSUL_CACERT)")
	fs.StringVar(&f.caPath, "ca-path", "", "with -consul: a directory of CA files, as -ca-file (default: CONSUL_CAPATH)")
	fs.StringVar(&f.clientCert, "client-cert", "", "with -consul: the client certificate for an agent whose tls.https.verify_incoming asks for one (default: CONSUL_CLIENT_CERT); also presented on the gRPC TLS port")
	fs.StringVar(&f.clientKey, "client-key", "", "with -consul: the key of -client-cert (default: CONSUL_CLIENT_KEY)")
	fs.StringVar(&f.tlsServerName, "tls-server-name", "", "with -consul: the server name the agent's certificate is checked for, HTTPS and gRPC TLS (default: CONSUL_TLS_SERVER_NAME, else the address's host)")
	fs.StringVar(&f.grpcAddr, "grpc-addr", os.Getenv(api.GRPCAddrEnvName), "with -l7-exports terminate: the agent's gRPC address, where it gives the gateway its certificate: https://host:port (its TLS port, ports.grpc_tls) or host:port for its plaintext port (ports.grpc) (default: CONSUL_GRPC_ADDR, else "+defaultGRPCAddr+")")
	fs.StringVar(&f.grpcCAFile, "grpc-ca-file", os.Getenv(api.GRPCCAFileEnvName), "with -l7-exports terminate: the CA file that verifies the agent's gRPC TLS certificate (default: CONSUL_GRPC_CACERT, else the HTTPS one, -ca-file)")
	fs.StringVar(&f.grpcCAPath, "grpc-ca-path", os.Getenv(api.GRPCCAPathEnvName), "with -l7-exports terminate: a directory of CA files, as -grpc-ca-file (default: CONSUL_GRPC_CAPATH, else -ca-path)")
}

// config returns api.DefaultConfig (the CONSUL_* environment) with the
// flags given merged over it.
func (f *agentFlags) config() *api.Config {
	cfg := api.DefaultConfig()
	for _, s := range []struct {
		to   *string
		from string
	}{
		{&cfg.Address, f.httpAddr}, {&cfg.Token, f.token}, {&cfg.TokenFile, f.tokenFile},
		{&cfg.Namespace, f.namespace}, {&cfg.Partition, f.partition},
		{&cfg.TLSConfig.CAFile, f.caFile}, {&cfg.TLSConfig.CAPath, f.caPath},
		{&cfg.TLSConfig.CertFile, f.clientCert}, {&cfg.TLSConfig.KeyFile, f.clientKey},
		{&cfg.TLSConfig.Address, f.tlsServerName},
	} {
		if s.from != "" {
			*s.to = s.from
		}
	}
	return cfg
}

// grpc returns the agent's gRPC address for the gateway's certificate and
// the TLS configuration for it (used when the address is https://): the
// gRPC CA, else the HTTPS one, and the HTTPS client certificate, as
// Consul's command falls back.
func (f *agentFlags) grpc(cfg *api.Config) (string, *tls.Config, error) {
	t := cfg.TLSConfig
	tc, err := api.SetupTLSConfig(&api.TLSConfig{Address: t.Address, CAFile: cmp.Or(f.grpcCAFile, t.CAFile),
		CAPath: cmp.Or(f.grpcCAPath, t.CAPath), CertFile: t.CertFile, KeyFile: t.KeyFile, InsecureSkipVerify: t.InsecureSkipVerify})
	if err != nil {
		return "", nil, fmt.Errorf("the agent's gRPC TLS settings (-grpc-ca-file, -grpc-ca-path, -client-cert, -client-key): %w", err)
	}
	return cmp.Or(f.grpcAddr, defaultGRPCAddr), tc, nil
}

// warnWithoutMeshWrite says at start, by name, that L7 termination needs
// mesh:write when the token lacks it: the agent signs a mesh gateway's
// own certificate only for a token with it (Consul's docs grant mesh
// "read"), and without the certificate every terminated export is refused
// at the handshake.
func warnWithoutMeshWrite(ctx context.Context, auth consulview.Authorizer, log *slog.Logger) {
	ok, err := auth.Allowed(ctx, "mesh", "write", "")
	switch {
	case err != nil:
		log.Info("meshgateway: could not ask whether the token has mesh:write, which -l7-exports terminate needs", "err", err)
	case !ok:
		log.Warn("meshgateway: -l7-exports terminate: the token lacks mesh:write, without which the agent does not sign the gateway's certificate; L7 exports are refused at the handshake until it does: add " +
			string(agenterr.WriteMesh) + " to the token's policy")
	}
}
