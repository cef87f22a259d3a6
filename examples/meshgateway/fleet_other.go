//go:build !unix

package main

import "os"

// upgradeSignals returns nil: there is no binary upgrade here.
func upgradeSignals() (<-chan os.Signal, func()) { return nil, func() {} }
