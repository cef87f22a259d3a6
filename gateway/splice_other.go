//go:build !linux

package gateway

import "net"

// spliceState is empty where there is no splice(2): every connection takes
// the copy path.
type spliceState struct{}

// startSplice returns false: there is no splice path on this system.
func (p *pumps) startSplice(_, _ *net.TCPConn) (func(), bool) { return nil, false }

// closeSpliced is never called: no connection is spliced here.
func (p *pumps) closeSpliced() {}

// splicedTotals is never called: no connection is spliced here.
func (p *pumps) splicedTotals() (up, down int64, upErr, downErr error) { return 0, 0, nil, nil }

// limitPipes has no pipes to limit here.
func limitPipes(int) {}
