//go:build unix

package handover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// spec is what envVar holds: the readiness pipe's descriptor and each
// listener's.
type spec struct {
	Ready     int            `json:"ready"`
	Listeners []listenerSpec `json:"listeners"`
}

type listenerSpec struct {
	Network string `json:"network"`
	Address string `json:"address"`
	FD      int    `json:"fd"`
}

// inherit takes the descriptors a parent named in envVar, and removes the
// variable so that a later upgrade's child does not see this one's.
func (p *Process) inherit() error {
	v, ok := os.LookupEnv(envVar)
	if !ok {
		return nil
	}
	os.Unsetenv(envVar)
	var s spec
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return fmt.Errorf("handover: %s=%q: %w", envVar, v, err)
	}
	if s.Ready < 3 {
		return fmt.Errorf("handover: %s=%q: the readiness descriptor %d is not an inherited one", envVar, v, s.Ready)
	}
	syscall.CloseOnExec(s.Ready)
	p.parent = os.NewFile(uintptr(s.Ready), "handover-ready")
	for _, l := range s.Listeners {
		if l.FD < 3 || l.FD == s.Ready {
			return fmt.Errorf("handover: %s=%q: descriptor %d of %s %s is not an inherited one", envVar, v, l.FD, l.Network, l.Address)
		}
		syscall.CloseOnExec(l.FD)
		p.inherited[listenKey{l.Network, l.Address}] = os.NewFile(uintptr(l.FD), "handover-"+l.Network+"-"+l.Address)
	}
	return nil
}

func (p *Process) upgrade(ctx context.Context, listeners []Listener) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	defer r.Close()
	files := []*os.File{w} // descriptor 3 in the child
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	s := spec{Ready: 3}
	for _, l := range listeners {
		f, err := dupListener(l.Listener)
		if err != nil {
			return fmt.Errorf("handover: %s %s: %w", l.Network, l.Address, err)
		}
		files = append(files, f)
		s.Listeners = append(s.Listeners, listenerSpec{l.Network, l.Address, 2 + len(files)})
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	cmd := exec.Command(p.path, p.opts.Args...)
	cmd.Dir = p.dir
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, envVar+"=") }),
		envVar+"="+string(b))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("handover: starting %s: %w", p.path, err)
	}
	for _, f := range files {
		f.Close() // the child has them; the pipe's write end must be the child's alone
	}
	files = nil
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	readied := make(chan bool, 1)
	go func() {
		var b [1]byte
		n, _ := r.Read(b[:])
		readied <- n == 1 && b[0] == readyByte
	}()
	pid := cmd.Process.Pid
	t := time.NewTimer(p.opts.Timeout)
	defer t.Stop()
	kill := func(why string) error {
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("handover: the new process %s (pid %d) %s; killed it", p.path, pid, why)
	}
	select {
	case ok := <-readied:
		if ok {
			return nil
		}
		// It closed the pipe without a word: it is ending.
		select {
		case err := <-exited:
			return endedError(p.path, pid, err)
		case <-t.C:
			return kill("closed its readiness pipe without being ready")
		}
	case err := <-exited:
		return endedError(p.path, pid, err)
	case <-t.C:
		return kill(fmt.Sprintf("was not ready within %s", p.opts.Timeout))
	case <-ctx.Done():
		return kill(fmt.Sprintf("was not ready when the upgrade was called off (%v)", ctx.Err()))
	}
}

func endedError(path string, pid int, err error) error {
	if err == nil {
		err = errors.New("exit status 0")
	}
	return fmt.Errorf("handover: the new process %s (pid %d) ended before it was ready: %w", path, pid, err)
}

// dupListener returns a descriptor of l's socket for a child. It is made
// with F_DUPFD_CLOEXEC on the raw descriptor rather than with
// (*net.TCPListener).File, whose file puts the socket (shared with l) into
// blocking mode when exec asks for its descriptor.
func dupListener(l net.Listener) (*os.File, error) {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("a %T has no descriptor to hand over", l)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var dup int
	var dupErr error
	if err := raw.Control(func(fd uintptr) { dup, dupErr = dupCloseOnExec(int(fd)) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	return os.NewFile(uintptr(dup), "handover-listener"), nil
}

// dupCloseOnExec duplicates fd with close-on-exec set, under ForkLock so
// that no concurrent exec inherits it in between.
func dupCloseOnExec(fd int) (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	d, err := syscall.Dup(fd)
	if err != nil {
		return -1, err
	}
	syscall.CloseOnExec(d)
	return d, nil
}
