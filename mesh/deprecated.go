package mesh

// Server is ConsulServer.
//
// Deprecated: use ConsulServer. This alias goes in the next release.
type Server = ConsulServer
