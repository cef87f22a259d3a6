//go:build unix

package handover_test

import (
	"context"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meshgate/meshgate/handover"
)

// A program that replaces its own binary on SIGUSR2 without closing its
// listening socket: install the new binary over the old one's path, then
// send the signal. On SIGTERM it stops as usual.
func Example() {
	p, err := handover.New(handover.Options{PIDFile: "/run/example.pid"})
	if err != nil {
		log.Fatal(err)
	}
	// Inherited from the previous process after an upgrade; new otherwise.
	ln, err := p.Listen(context.Background(), nil, "tcp", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(ln)
	if err := p.Ready(); err != nil { // the previous process stops accepting now
		log.Print(err)
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGUSR2, syscall.SIGTERM)
	for sig := range signals {
		if sig == syscall.SIGUSR2 {
			err := p.Upgrade(context.Background(), []handover.Listener{{Network: "tcp", Address: "127.0.0.1:8080", Listener: ln}})
			if err != nil {
				log.Print(err) // the new binary failed: this one goes on serving
				continue
			}
		} else {
			p.Close() // no successor: the PID file goes
		}
		break
	}
	// Stop accepting (the socket stays open in the new process), drain, exit.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
