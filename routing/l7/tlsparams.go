package l7

import (
	"crypto/tls"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// tlsParams are the protocol versions and TLS 1.0-1.2 cipher suites of one
// direction of the mesh entry's TLS settings, as Consul's
// makeTLSParametersFromProxyTLSConfig hands them to Envoy; zero values keep
// the defaults: TLS 1.2 to 1.3 and Go's cipher suites (Envoy's
// TLS_AUTO; its default suites also allow RSA key exchange, Go's do not).
type tlsParams struct {
	min, max uint16
	ciphers  []uint16
}

// tlsVersions are Consul's TLS version names (types.TLSVersion).
var tlsVersions = map[string]uint16{
	"TLSv1_0": tls.VersionTLS10,
	"TLSv1_1": tls.VersionTLS11,
	"TLSv1_2": tls.VersionTLS12,
	"TLSv1_3": tls.VersionTLS13,
}

// cipherSuites are the cipher suites Consul accepts in the mesh entry
// (types.TLSCipherSuite, the ones it maps to Envoy's names).
var cipherSuites = map[string]uint16{
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256":       tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256":         tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256":   tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA":          tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA":            tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	"TLS_RSA_WITH_AES_128_GCM_SHA256":               tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	"TLS_RSA_WITH_AES_128_CBC_SHA":                  tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384":       tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384":         tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	"TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA":          tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	"TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA":            tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	"TLS_RSA_WITH_AES_256_GCM_SHA384":               tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	"TLS_RSA_WITH_AES_256_CBC_SHA":                  tls.TLS_RSA_WITH_AES_256_CBC_SHA,
}

// meshTLS returns the parameters of the mesh entry's TLS.Incoming
// (outgoing false) or TLS.Outgoing (true); mesh may be nil. A value Consul
// would not accept is an error naming it, and the defaults stand.
func meshTLS(mesh *api.MeshConfigEntry, outgoing bool) (tlsParams, error) {
	p := tlsParams{min: tls.VersionTLS12}
	if mesh == nil || mesh.TLS == nil {
		return p, nil
	}
	d, field := mesh.TLS.Incoming, "TLS.Incoming"
	if outgoing {
		d, field = mesh.TLS.Outgoing, "TLS.Outgoing"
	}
	if d == nil {
		return p, nil
	}
	out := tlsParams{min: tls.VersionTLS12}
	for _, v := range []struct {
		name, value string
		to          *uint16
	}{{"TLSMinVersion", d.TLSMinVersion, &out.min}, {"TLSMaxVersion", d.TLSMaxVersion, &out.max}} {
		switch v.value {
		case "", "TLS_AUTO":
			continue
		}
		version, ok := tlsVersions[v.value]
		if !ok {
			return p, fmt.Errorf("l7: mesh %s.%s %q is not a TLS version Consul accepts (TLS_AUTO, TLSv1_0 ... TLSv1_3)", field, v.name, v.value)
		}
		*v.to = version
	}
	if out.max != 0 && out.max < out.min {
		return p, fmt.Errorf("l7: mesh %s: TLSMaxVersion %s is below TLSMinVersion %s", field, d.TLSMaxVersion, d.TLSMinVersion)
	}
	for _, name := range d.CipherSuites {
		id, ok := cipherSuites[name]
		if !ok {
			return p, fmt.Errorf("l7: mesh %s.CipherSuites: %q is not a cipher suite Consul accepts", field, name)
		}
		out.ciphers = append(out.ciphers, id)
	}
	return out, nil
}

// apply sets the parameters on cfg.
func (p tlsParams) apply(cfg *tls.Config) {
	cfg.MinVersion, cfg.MaxVersion, cfg.CipherSuites = p.min, p.max, p.ciphers
}
