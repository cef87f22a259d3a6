package handover

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// notifyReady tells a service manager that listens on $NOTIFY_SOCKET
// (systemd's sd_notify protocol: one datagram of KEY=VALUE lines) that this
// process is ready and is now the service's main process, as a process that
// replaced its parent must (systemd needs NotifyAccess=all to take MAINPID
// from it). Without the variable it does nothing.
func notifyReady() error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:] // Linux's abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("handover: NOTIFY_SOCKET: %w", err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "READY=1\nMAINPID=%d\n", os.Getpid()); err != nil {
		return fmt.Errorf("handover: NOTIFY_SOCKET: %w", err)
	}
	return nil
}

// lookPath returns the absolute path of the program name, looked up in
// PATH when it has no slash.
func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}
