// Package sni reads the TLS ClientHello off a connection without consuming or
// decrypting it, and speaks Consul's SNI name grammar both ways.
//
// The wire half: Reader.Read reads until one whole ClientHello handshake
// message has arrived, over any number of TLS records and TCP reads, bounded
// in size (Reader.MaxSize) and time (Reader.Timeout and the context), and
// returns every byte it read so a proxy can replay them upstream. An event
// loop that reads without blocking asks a Gatherer instead, after each read.
// ParseClientHello parses a message strictly, in the manner of crypto/tls, and
// allocates nothing when the names repeat. Failures wrap ErrNotTLS,
// ErrMalformed, ErrInvalidServerName, ErrTooLarge or ErrTimeout.
//
// The name half mirrors Consul's agent/connect/sni.go: ServiceSNI,
// PeeredServiceSNI, GatewaySNI, QuerySNI, PeeringServerSNI and ServerSNI build
// names; ParseName is their exact inverse and rejects names of another trust
// domain (ErrForeignTrustDomain) or of no known shape (ErrMalformedName).
package sni
