package gateway

import (
	"time"

	"github.com/meshgate/meshgate/internal/outlier"
)

// Defaults of outlier detection. Envoy ejects a host after five
// consecutive failures, for 30 seconds, and then lets client connections
// find out whether it is back; a dead endpoint so costs a client a connect
// timeout five times, and again every 30 seconds. A Server ejects a target
// at its first failed connect and lets a probe of its own find out when it
// is back: no client waits for a dead target twice.
const (
	DefaultEjectAfter = outlier.DefaultEjectAfter
	// DefaultEjectFor is the longest wait between two probes of an ejected
	// target; the first comes 250 ms after the ejection, each later one
	// waits twice as long, up to this.
	DefaultEjectFor time.Duration = outlier.DefaultEjectFor
)
