// Package handover replaces a running program with a new copy of its binary
// without closing its listening sockets: a binary upgrade, as nginx and
// HAProxy do on SIGUSR2.
//
// The running process (the parent) starts the new binary with its listeners
// as inherited descriptors; the new process (the child) takes them with
// Listen instead of listening again, and calls Ready once it serves; only
// then does Upgrade return nil in the parent, which stops accepting and
// drains. Both processes accept on the same sockets for a moment, so the
// kernel queues every connection attempt on a socket that never closes, and
// none is refused while the binaries change. A child that exits, or is not
// ready within Options.Timeout (then it is killed), makes Upgrade fail and
// leaves the parent serving as before.
//
// Upgrade works on Unix; elsewhere it returns ErrNotSupported and Listen
// simply listens.
package handover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/meshgate/meshgate/internal/problems"
)

// DefaultTimeout bounds the new process's start when Options.Timeout is
// zero: from its start to its Ready.
const DefaultTimeout = time.Minute

// ErrNotSupported is returned by Upgrade where descriptors cannot be passed
// to a new process (Windows, Plan 9, js, wasip1).
var ErrNotSupported = errors.New("handover: binary upgrade is not supported on " + runtime.GOOS)

// envVar carries, from parent to child, which inherited descriptor is
// which (JSON, see spec).
const envVar = "MESHGATE_HANDOVER"

// readyByte is what the child writes on the readiness pipe once ready.
const readyByte = 'R'

// Options configures a Process. The zero value upgrades to the binary the
// program was started from, with the same arguments.
type Options struct {
	// Path is the binary the new process runs: empty means the one this
	// process was started as (os.Args[0], looked up in PATH and made
	// absolute when New is called). Replace the file there, then upgrade.
	Path string
	// Args are the new process's arguments, without the program name; nil
	// means this process's (os.Args[1:]).
	Args []string
	// Timeout bounds the new process's start, from its start to its Ready;
	// zero means DefaultTimeout (1 minute). A process not ready by then is
	// killed.
	Timeout time.Duration
	// PIDFile, if set, is written with the process's PID by Ready (to a
	// temporary file renamed into place), before the parent is told; a
	// service manager that follows it (systemd's PIDFile=) takes the new
	// process as the service's main one when the old one exits.
	PIDFile string
}

// Listener is a listening socket to hand over, under the network and
// address it was asked for (the child asks again with the same pair).
type Listener struct {
	Network, Address string
	Listener         net.Listener
}

// Process is this process's side of binary upgrades: the listeners it
// inherited (if a previous process started it with Upgrade) and the start
// of the next one. Make it with New; its methods are safe for concurrent
// use.
type Process struct {
	opts Options
	path string
	dir  string

	mu        sync.Mutex
	inherited map[listenKey]*os.File // not yet taken by Listen
	parent    *os.File               // the readiness pipe to the parent, or nil
	ready     bool
	upgrading bool
}

type listenKey struct{ network, address string }

// New returns this process's Process. A process started by Upgrade gets the
// listeners it inherited, for Listen. It is an error if the descriptors the
// parent named cannot be used.
func New(opts Options) (*Process, error) {
	p := &Process{opts: opts, inherited: map[listenKey]*os.File{}}
	if opts.Timeout <= 0 {
		p.opts.Timeout = DefaultTimeout
	}
	if p.opts.Args == nil && len(os.Args) > 1 {
		p.opts.Args = os.Args[1:]
	}
	p.dir, _ = os.Getwd()
	p.path = opts.Path
	if p.path == "" && len(os.Args) > 0 {
		p.path = os.Args[0]
	}
	if p.path != "" && !filepath.IsAbs(p.path) {
		if abs, err := lookPath(p.path); err == nil {
			p.path = abs
		}
	}
	if err := p.inherit(); err != nil {
		return nil, err
	}
	return p, nil
}

// Inherited reports whether a previous process started this one with
// Upgrade.
func (p *Process) Inherited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.parent != nil
}

// Listen returns the listener inherited for network and address, if the
// parent handed one over under that pair, else a new one from lc (nil means
// a zero net.ListenConfig). An inherited listener keeps the socket the
// parent accepted on, so it has the parent's actual address (for an
// address with port 0, the port the parent got).
func (p *Process) Listen(ctx context.Context, lc *net.ListenConfig, network, address string) (net.Listener, error) {
	p.mu.Lock()
	f := p.inherited[listenKey{network, address}]
	delete(p.inherited, listenKey{network, address})
	p.mu.Unlock()
	if f != nil {
		ln, err := net.FileListener(f)
		f.Close() // ln has its own descriptor
		if err != nil {
			return nil, fmt.Errorf("handover: the listener inherited for %s %s: %w", network, address, err)
		}
		return ln, nil
	}
	if lc == nil {
		lc = &net.ListenConfig{}
	}
	return lc.Listen(ctx, network, address)
}

// Ready says that this process serves: the inherited listeners Listen did
// not take are closed, the PID file is written, the parent (if any) is told
// (its Upgrade returns nil, and it stops accepting), and a service manager
// listening on $NOTIFY_SOCKET (systemd's Type=notify) gets READY=1 with
// this process's PID as the main one. Later calls do nothing.
func (p *Process) Ready() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ready {
		return nil
	}
	p.ready = true
	for k, f := range p.inherited {
		f.Close()
		delete(p.inherited, k)
	}
	var errs []error
	if p.opts.PIDFile != "" {
		if err := writePIDFile(p.opts.PIDFile); err != nil {
			errs = append(errs, fmt.Errorf("handover: writing the PID file: %w", err))
		}
	}
	if p.parent != nil {
		_, err := p.parent.Write([]byte{readyByte})
		p.parent.Close()
		p.parent = nil
		if err != nil {
			errs = append(errs, fmt.Errorf("handover: telling the previous process: %w", err))
		}
	}
	if err := notifyReady(); err != nil {
		errs = append(errs, err)
	}
	return problems.Join(errs...)
}

// Close removes the PID file if it still names this process: call it when
// the program exits without having handed over to a new one.
func (p *Process) Close() error {
	if p.opts.PIDFile == "" {
		return nil
	}
	b, err := os.ReadFile(p.opts.PIDFile)
	if err != nil || string(b) != strconv.Itoa(os.Getpid())+"\n" {
		return nil
	}
	return os.Remove(p.opts.PIDFile)
}

// Upgrade starts the new process (Options.Path with Options.Args, in the
// working directory this process started in, with its environment and its
// standard input, output and error) with listeners handed over, and waits
// until it is ready (nil: stop accepting on them and drain) or has failed
// (an error that says why; the new process has ended or been killed, and
// this one goes on as before). One upgrade runs at a time; the listeners
// stay open in this process either way.
func (p *Process) Upgrade(ctx context.Context, listeners []Listener) error {
	p.mu.Lock()
	if p.upgrading {
		p.mu.Unlock()
		return errors.New("handover: an upgrade is already under way")
	}
	p.upgrading = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.upgrading = false
		p.mu.Unlock()
	}()
	if p.path == "" {
		return errors.New("handover: no binary to start: Options.Path is empty and so is os.Args[0]")
	}
	return p.upgrade(ctx, listeners)
}

// writePIDFile writes this process's PID to path through a temporary file
// in the same directory, renamed into place, so a reader never sees half.
func writePIDFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = fmt.Fprintf(tmp, "%d\n", os.Getpid())
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
