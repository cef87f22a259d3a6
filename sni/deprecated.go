package sni

// ServerName is ConsulServer.
//
// Deprecated: use ConsulServer. This alias goes in the next release.
type ServerName = ConsulServer

// ErrNotServerName is ErrNotServerSNI.
//
// Deprecated: use ErrNotServerSNI.
var ErrNotServerName = ErrNotServerSNI

// ParseServerName is ParseServerSNI.
//
// Deprecated: use ParseServerSNI. This function goes in the next release.
func ParseServerName(name, domain string) (ConsulServer, error) { return ParseServerSNI(name, domain) }

// ServerNameOf is ServerSNIOf.
//
// Deprecated: use ServerSNIOf. This function goes in the next release.
func ServerNameOf(name, domain string) (ConsulServer, bool) { return ServerSNIOf(name, domain) }
