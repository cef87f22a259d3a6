//go:build unix

package handover_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshgate/meshgate/handover"
)

// The test binary is also the new process: with childEnv set, TestMain
// runs the child's part instead of the tests.
const (
	childEnv  = "HANDOVER_TEST_CHILD" // what the child does
	addrsEnv  = "HANDOVER_TEST_ADDRS" // the addresses it asks Listen for, comma-separated
	childLife = 2 * time.Minute       // a child left behind by a failed test ends on its own
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child is the new process: "serve" takes the listeners of addrsEnv (the
// first only with "serve-first") and answers each connection with
// "child <pid> <inherited>", then calls Ready; "exit" ends at once with
// status 3; "hang" never calls Ready.
func child(mode string) int {
	p, err := handover.New(handover.Options{PIDFile: os.Getenv("HANDOVER_TEST_PIDFILE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	switch mode {
	case "exit":
		return 3
	case "hang":
		time.Sleep(childLife)
		return 0
	}
	addrs := strings.Split(os.Getenv(addrsEnv), ",")
	if mode == "serve-first" {
		addrs = addrs[:1]
	}
	for _, a := range addrs {
		ln, err := p.Listen(context.Background(), nil, "tcp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 2
		}
		go serve(ln, fmt.Sprintf("child %d %v", os.Getpid(), p.Inherited()))
	}
	if err := p.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	time.Sleep(childLife)
	return 0
}

// serve answers each connection on ln with line, until ln closes.
func serve(ln net.Listener, line string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, line)
		}()
	}
}

// ask connects to addr and returns the line it answers.
func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// parent makes this test's process the running one: a Process that starts
// the test binary in mode, and a listener per address serving "parent".
func parent(t *testing.T, mode string, timeout time.Duration, addrs ...string) (*handover.Process, []handover.Listener) {
	t.Helper()
	t.Setenv(childEnv, mode)
	t.Setenv(addrsEnv, strings.Join(addrs, ","))
	t.Setenv("HANDOVER_TEST_PIDFILE", filepath.Join(t.TempDir(), "gw.pid"))
	p, err := handover.New(handover.Options{Args: []string{"-test.run=^$"}, Timeout: timeout, PIDFile: os.Getenv("HANDOVER_TEST_PIDFILE")})
	if err != nil {
		t.Fatal(err)
	}
	if p.Inherited() {
		t.Fatal("the test process reports a parent")
	}
	var lns []handover.Listener
	for _, a := range addrs {
		ln, err := p.Listen(context.Background(), nil, "tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serve(ln, "parent")
		lns = append(lns, handover.Listener{Network: "tcp", Address: a, Listener: ln})
	}
	return p, lns
}

// killChild ends the child whose answer is line ("child <pid> ...").
func killChild(t *testing.T, line string) {
	t.Helper()
	f := strings.Fields(line)
	if len(f) < 2 {
		return
	}
	if pid, err := strconv.Atoi(f[1]); err == nil && pid != os.Getpid() {
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	}
}

func TestUpgradeRefusesNoConnection(t *testing.T) {
	p, lns := parent(t, "serve", time.Minute, "127.0.0.1:0")
	addr := lns[0].Listener.Addr().String()

	// Clients connect one after another all through the upgrade.
	var parentN, childN, failed atomic.Int64
	var firstErr atomic.Value
	var childLine atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				line, err := ask(addr)
				switch {
				case err != nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				case line == "parent":
					parentN.Add(1)
				case strings.HasPrefix(line, "child "):
					childN.Add(1)
					childLine.CompareAndSwap(nil, line)
				}
			}
		}()
	}
	waitFor(t, "clients served by the parent", func() bool { return parentN.Load() >= 20 })
	if err := p.Upgrade(context.Background(), lns); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	lns[0].Listener.Close() // the parent stops accepting, as a program does once Upgrade returns
	waitFor(t, "clients served by the child", func() bool { return childN.Load() >= 200 })
	close(stop)
	wg.Wait()
	line, _ := childLine.Load().(string)
	killChild(t, line)
	t.Logf("upgrade under load: %d connections answered by the parent, %d by the child, %d failed", parentN.Load(), childN.Load(), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d connections failed during the upgrade, the first with: %v", n, firstErr.Load())
	}
	if !strings.HasSuffix(line, " true") {
		t.Errorf("the child answered %q: it should report that it inherited its listener", line)
	}
	pid, err := os.ReadFile(os.Getenv("HANDOVER_TEST_PIDFILE"))
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(line); len(f) < 2 || strings.TrimSpace(string(pid)) != f[1] {
		t.Errorf("PID file holds %q; the child is %q", pid, line)
	}
}

func TestFailedUpgradeLeavesTheOldProcessServing(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		timeout time.Duration
		want    string
	}{
		{"exit", time.Minute, "ended before it was ready: exit status 3"},
		{"hang", 300 * time.Millisecond, "was not ready within 300ms; killed it"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			p, lns := parent(t, tc.mode, tc.timeout, "127.0.0.1:0")
			err := p.Upgrade(context.Background(), lns)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Upgrade: %v; want an error with %q", err, tc.want)
			}
			for range 20 {
				if line, err := ask(lns[0].Listener.Addr().String()); err != nil || line != "parent" {
					t.Fatalf("after the failed upgrade: %q, %v; want the parent's answer", line, err)
				}
			}
			if _, err := os.Stat(os.Getenv("HANDOVER_TEST_PIDFILE")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed upgrade left a PID file: %v", err)
			}
		})
	}
}

func TestListenersTheChildDoesNotTakeAreClosed(t *testing.T) {
	p, lns := parent(t, "serve-first", time.Minute, "127.0.0.1:0", "127.0.0.2:0")
	if err := p.Upgrade(context.Background(), lns); err != nil {
		t.Fatal(err)
	}
	for _, l := range lns {
		l.Listener.Close()
	}
	line, err := ask(lns[0].Listener.Addr().String())
	if err != nil || !strings.HasPrefix(line, "child ") {
		t.Fatalf("the listener the child took: %q, %v", line, err)
	}
	killChild(t, line)
	if line, err := ask(lns[1].Listener.Addr().String()); err == nil {
		t.Fatalf("the listener the child left answered %q; it should be closed", line)
	}
}

func TestReadyNotifiesTheServiceManager(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	p, lns := parent(t, "serve", time.Minute, "127.0.0.1:0")
	if err := p.Upgrade(context.Background(), lns); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 512)
	n, err := pc.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	lns[0].Listener.Close()
	line, err := ask(lns[0].Listener.Addr().String())
	if err == nil {
		killChild(t, line)
	}
	msg := string(buf[:n])
	f := strings.Fields(line)
	if len(f) < 2 || msg != "READY=1\nMAINPID="+f[1]+"\n" {
		t.Fatalf("NOTIFY_SOCKET got %q; want READY=1 and the child's PID (it answered %q)", msg, line)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 60 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
