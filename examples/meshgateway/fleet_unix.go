//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// upgradeSignals returns a channel that receives SIGUSR2, the binary
// upgrade's signal (nginx's and HAProxy's), and a function that stops it.
func upgradeSignals() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR2)
	return ch, func() { signal.Stop(ch) }
}
