package uring

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/meshgate/meshgate/internal/testrig/uringtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// newRing sets up a ring for one test, on a goroutine locked to its
// thread as SingleIssuer needs.
func newRing(t *testing.T, p Params) *Ring {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	r, err := New(p)
	require.NoError(t, err, "io_uring must be available on the machines this project builds on (a 6.x kernel)")
	t.Cleanup(func() { r.Close() })
	return r
}

// wait submits what is queued and collects completions until n have come,
// failing after a generous bound.
func wait(t *testing.T, r *Ring, n int) []CQE {
	t.Helper()
	var got []CQE
	buf := make([]CQE, 64)
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d completions came of the %d awaited: %+v", len(got), n, got)
		}
		_, err := r.SubmitAndWait(1, 100*time.Millisecond)
		require.NoError(t, err)
		k := r.Reap(buf)
		got = append(got, buf[:k]...)
	}
	return got
}

// listen opens a raw listening TCP socket on loopback.
func listen(t *testing.T) (int, string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 128))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	return fd, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port)).String()
}

// pair returns a raw, non-blocking socket accepted from a loopback
// listener and the net.Conn that dialled it.
func pair(t *testing.T) (int, net.Conn) {
	t.Helper()
	lfd, addr := listen(t)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd, c
}

func TestCheck(t *testing.T) {
	require.NoError(t, Check(), "io_uring must be available on the machines this project builds on (a 6.x kernel)")
}

// One multishot accept takes every connection until it is cancelled.
func TestMultishotAccept(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	assert.True(t, r.SingleIssuer(), "a 6.x kernel takes IORING_SETUP_SINGLE_ISSUER")
	lfd, addr := listen(t)
	r.Next().PrepMultishotAccept(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	r.sqes[(r.sqeTail-1)&r.sqMask].UserData = 1
	for range 3 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
	}
	for _, cqe := range wait(t, r, 3) {
		require.EqualValues(t, 1, cqe.UserData)
		require.GreaterOrEqual(t, cqe.Res, int32(0), "accept: %v", cqe.Err())
		assert.NotZero(t, cqe.Flags&CQEMore, "the accept goes on")
		flags, err := unix.FcntlInt(uintptr(cqe.Res), unix.F_GETFL, 0)
		require.NoError(t, err)
		assert.NotZero(t, flags&unix.O_NONBLOCK, "SOCK_NONBLOCK applied")
		unix.Close(int(cqe.Res))
	}
	sqe := r.Next()
	sqe.PrepCancel(1)
	sqe.UserData = 2
	got := map[uint64]CQE{}
	for _, cqe := range wait(t, r, 2) {
		got[cqe.UserData] = cqe
	}
	assert.ErrorIs(t, got[1].Err(), unix.ECANCELED)
	assert.Zero(t, got[1].Flags&CQEMore, "a cancelled accept posts its last completion")
	assert.NoError(t, got[2].Err())
}

// A multishot recv takes provided buffers as data arrives, stops with
// ENOBUFS when none is left, and reports the peer's FIN as 0.
func TestRecvProvidedBuffers(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	b, err := r.NewBufRing(7, 4, 64)
	require.NoError(t, err)
	defer b.Close()
	fd, c := pair(t)
	recv := func() {
		sqe := r.Next()
		sqe.PrepRecv(fd, b.Group(), true)
		sqe.UserData = 9
	}
	recv()
	_, err = r.Submit()
	require.NoError(t, err)

	// 200 bytes fill four buffers of 64: 64, 64, 64, 8 (or fewer, larger
	// pieces as they arrive); then the ring is empty.
	sent := bytes.Repeat([]byte("0123456789"), 20)
	_, err = c.Write(sent)
	require.NoError(t, err)
	var got []byte
	var ids []uint16
	for len(got) < len(sent) {
		for _, cqe := range wait(t, r, 1) {
			require.GreaterOrEqual(t, cqe.Res, int32(1), "recv: %v", cqe.Err())
			require.NotZero(t, cqe.Flags&CQEBuffer)
			assert.NotZero(t, cqe.Flags&CQEMore)
			got = append(got, b.Bytes(cqe.BufferID(), int(cqe.Res))...)
			ids = append(ids, cqe.BufferID())
		}
	}
	assert.Equal(t, sent, got)
	assert.Len(t, ids, 4, "200 bytes take four 64-byte buffers")

	// Nothing is left for more data: the recv ends with ENOBUFS.
	_, err = c.Write([]byte("more"))
	require.NoError(t, err)
	cqe := wait(t, r, 1)[0]
	assert.ErrorIs(t, cqe.Err(), unix.ENOBUFS)
	assert.Zero(t, cqe.Flags&CQEMore, "ENOBUFS ends a multishot recv")

	// Buffers put back take the data that waited, then the FIN.
	for _, id := range ids {
		b.Put(id)
	}
	b.Publish()
	recv()
	cqe = wait(t, r, 1)[0]
	require.EqualValues(t, 4, cqe.Res, "recv: %v", cqe.Err())
	assert.Equal(t, "more", string(b.Bytes(cqe.BufferID(), 4)))
	b.Put(cqe.BufferID())
	b.Publish()
	c.Close()
	cqe = wait(t, r, 1)[0]
	assert.EqualValues(t, 0, cqe.Res, "the peer's FIN")
	assert.Zero(t, cqe.Flags&CQEMore, "a FIN ends a multishot recv")
}

// A single accept writes the peer's address where it is told.
func TestAcceptWithAddress(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	lfd, addr := listen(t)
	var sa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	sqe := r.Next()
	sqe.PrepAccept(lfd, &sa, &n, unix.SOCK_CLOEXEC)
	sqe.UserData = 1
	_, err := r.Submit()
	require.NoError(t, err)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	cqe := wait(t, r, 1)[0]
	require.GreaterOrEqual(t, cqe.Res, int32(0), "accept: %v", cqe.Err())
	unix.Close(int(cqe.Res))
	assert.Equal(t, c.LocalAddr().String(), AddrPortOf(&sa).String())
}

// socket, connect linked to send, shutdown and close through the ring
// reach a real peer in that order.
func TestSocketConnectSendShutdownClose(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // ends at the FIN of the shutdown
		received <- b
	}()

	sqe := r.Next()
	sqe.PrepSocket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	sqe.UserData = 1
	cqe := wait(t, r, 1)[0]
	require.GreaterOrEqual(t, cqe.Res, int32(0), "socket: %v", cqe.Err())
	fd := int(cqe.Res)

	var sa unix.RawSockaddrAny
	n, family := Sockaddr(netip.MustParseAddrPort(ln.Addr().String()), &sa)
	require.Equal(t, unix.AF_INET, family)
	msg := []byte("hello through the ring")
	sqe = r.Next()
	sqe.PrepConnect(fd, &sa, n)
	sqe.Flags |= FlagLink
	sqe.UserData = 2
	sqe = r.Next()
	sqe.PrepSend(fd, msg)
	sqe.Flags |= FlagLink
	sqe.UserData = 3
	sqe = r.Next()
	sqe.PrepShutdown(fd, unix.SHUT_WR)
	sqe.UserData = 4
	got := map[uint64]int32{}
	for _, cqe := range wait(t, r, 3) {
		got[cqe.UserData] = cqe.Res
	}
	assert.Equal(t, map[uint64]int32{2: 0, 3: int32(len(msg)), 4: 0}, got)
	select {
	case b := <-received:
		assert.Equal(t, msg, b)
	case <-time.After(20 * time.Second):
		t.Fatal("the peer did not see the FIN")
	}

	sqe = r.Next()
	sqe.PrepClose(fd)
	sqe.UserData = 5
	cqe = wait(t, r, 1)[0]
	assert.NoError(t, cqe.Err())
	_, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	assert.ErrorIs(t, err, unix.EBADF, "the descriptor is closed")
}

// A connect to a port nobody listens on fails with ECONNREFUSED, and the
// send linked to it is cancelled.
func TestConnectRefused(t *testing.T) {
	r := newRing(t, Params{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	var sa unix.RawSockaddrAny
	n, _ := Sockaddr(addr, &sa)
	sqe := r.Next()
	sqe.PrepConnect(fd, &sa, n)
	sqe.Flags |= FlagLink
	sqe.UserData = 1
	sqe = r.Next()
	sqe.PrepSend(fd, []byte("x"))
	sqe.UserData = 2
	got := map[uint64]error{}
	for _, cqe := range wait(t, r, 2) {
		got[cqe.UserData] = cqe.Err()
	}
	assert.ErrorIs(t, got[1], unix.ECONNREFUSED)
	assert.ErrorIs(t, got[2], unix.ECANCELED)
}

// Cancelling every operation on a socket, hard-linked to its close, ends a
// pending recv and really closes the socket: the peer sees the FIN.
func TestCancelFDThenClose(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	b, err := r.NewBufRing(1, 2, 64)
	require.NoError(t, err)
	defer b.Close()
	fd, c := pair(t)
	sqe := r.Next()
	sqe.PrepRecv(fd, 1, true)
	sqe.UserData = 1
	_, err = r.Submit()
	require.NoError(t, err)
	sqe = r.Next()
	sqe.PrepCancelFD(fd)
	sqe.Flags |= FlagHardLink
	sqe.UserData = 2
	sqe = r.Next()
	sqe.PrepClose(fd)
	sqe.UserData = 3
	got := map[uint64]int32{}
	for _, cqe := range wait(t, r, 3) {
		got[cqe.UserData] = cqe.Res
	}
	assert.Equal(t, map[uint64]int32{1: -int32(unix.ECANCELED), 2: 1, 3: 0}, got)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := c.Read(make([]byte, 1))
	assert.Equal(t, 0, n)
	assert.ErrorIs(t, err, io.EOF, "the closed socket sent its FIN")
}

// Splice through a pipe moves a socket's bytes to another socket.
func TestSplice(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	in, src := pair(t)
	out, dst := pair(t)
	// splice honours O_NONBLOCK, and the ring does not poll for it: with
	// a blocking socket the kernel waits for the data on a worker thread.
	require.NoError(t, unix.SetNonblock(in, false))
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	msg := bytes.Repeat([]byte("spliced "), 1000)
	go src.Write(msg)
	got := make([]byte, 0, len(msg))
	done := make(chan error, 1)
	go func() {
		dst.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := io.ReadFull(dst, got[:len(msg)])
		done <- err
	}()
	for moved := 0; moved < len(msg); {
		sqe := r.Next()
		sqe.PrepSplice(in, p[1], 1<<16, unix.SPLICE_F_MOVE)
		sqe.UserData = 1
		cqe := wait(t, r, 1)[0]
		require.Greater(t, cqe.Res, int32(0), "splice in: %v", cqe.Err())
		for left := cqe.Res; left > 0; {
			sqe = r.Next()
			sqe.PrepSplice(p[0], out, uint32(left), unix.SPLICE_F_MOVE)
			sqe.UserData = 2
			cqe2 := wait(t, r, 1)[0]
			require.Greater(t, cqe2.Res, int32(0), "splice out: %v", cqe2.Err())
			left -= cqe2.Res
		}
		moved += int(cqe.Res)
	}
	require.NoError(t, <-done)
	assert.Equal(t, msg, got[:len(msg)])
}

// Completions beyond the completion queue are kept by the kernel and come,
// each once and in order, when the ring is reaped.
func TestCQOverflow(t *testing.T) {
	r := newRing(t, Params{Entries: 4, CQEntries: 8, SingleIssuer: true})
	const n = 100
	for i := range n {
		sqe := r.Next()
		require.NotNil(t, sqe, "SQE %d", i)
		sqe.PrepNop()
		sqe.UserData = uint64(i)
	}
	_, err := r.Submit()
	require.NoError(t, err)
	require.NotZero(t, atomic.LoadUint32(r.sqFlags)&sqCQOverflow, "the kernel holds completions past the queue's 8")
	got := wait(t, r, n)
	require.Len(t, got, n)
	for i, cqe := range got {
		assert.EqualValues(t, i, cqe.UserData)
	}
	assert.Zero(t, r.Dropped())
}

// A wait with a timeout and nothing in flight returns, with nothing to
// reap.
func TestWaitTimeout(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	_, err := r.SubmitAndWait(1, 10*time.Millisecond)
	require.NoError(t, err)
	assert.Zero(t, r.Reap(make([]CQE, 4)))
}

// A recv with nothing to read holds no buffer: other recvs take them.
func TestIdleRecvHoldsNoBuffer(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	b, err := r.NewBufRing(3, 1, 32)
	require.NoError(t, err)
	defer b.Close()
	idle, _ := pair(t)
	busy, c := pair(t)
	for i, fd := range []int{idle, busy} {
		sqe := r.Next()
		sqe.PrepRecv(fd, 3, true)
		sqe.UserData = uint64(i)
	}
	_, err = r.Submit()
	require.NoError(t, err)
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	cqe := wait(t, r, 1)[0]
	assert.EqualValues(t, 1, cqe.UserData)
	assert.EqualValues(t, 1, cqe.Res, "recv: %v", cqe.Err())
}

func TestNewRejectsBadSizes(t *testing.T) {
	_, err := New(Params{Entries: 1 << 20})
	assert.ErrorContains(t, err, "1048576 submission entries")
	r := newRing(t, Params{})
	_, err = r.NewBufRing(0, 3, 64)
	assert.ErrorContains(t, err, "3 provided buffers")
}

// Sockaddr writes the address in network byte order.
func TestSockaddr(t *testing.T) {
	var sa unix.RawSockaddrAny
	n, family := Sockaddr(netip.MustParseAddrPort("127.0.0.1:8443"), &sa)
	assert.Equal(t, unix.AF_INET, family)
	assert.EqualValues(t, unix.SizeofSockaddrInet4, n)
	sin := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
	assert.Equal(t, [4]byte{127, 0, 0, 1}, sin.Addr)
	assert.Equal(t, [2]byte{0x20, 0xfb}, *(*[2]byte)(unsafe.Pointer(&sin.Port)))
	assert.Equal(t, "127.0.0.1:8443", AddrPortOf(&sa).String())
	n, family = Sockaddr(netip.MustParseAddrPort("[::1]:80"), &sa)
	assert.Equal(t, "[::1]:80", AddrPortOf(&sa).String())
	assert.Equal(t, unix.AF_INET6, family)
	assert.EqualValues(t, unix.SizeofSockaddrInet6, n)
	n, family = Sockaddr(netip.MustParseAddrPort("[::ffff:127.0.0.2]:80"), &sa)
	assert.Equal(t, unix.AF_INET, family, "an IPv4 address in IPv6 is dialled as IPv4")
	assert.EqualValues(t, unix.SizeofSockaddrInet4, n)
}

// When io_uring_setup is refused, New and Check say why, wrapping
// ErrUnavailable. A child process installs a seccomp filter (as container
// runtimes do) that fails io_uring_setup with EPERM or ENOSYS, and reads
// the sysctl from a file the test writes.
func TestUnavailable(t *testing.T) {
	if os.Getenv("URING_TEST_SECCOMP_ERRNO") != "" {
		return // the child's side runs in TestMain
	}
	for _, tc := range []struct {
		errno    syscall.Errno
		disabled string
		want     string
	}{
		{unix.EPERM, "2", "/io_uring_disabled is 2 (disabled for every process)"},
		{unix.EPERM, "1", "/io_uring_disabled is 1 (only for the group"},
		{unix.EPERM, "0", "refused although " + "%s is 0; a seccomp filter"},
		{unix.ENOSYS, "0", "the kernel has no io_uring, or a seccomp filter hides it"},
	} {
		dir := t.TempDir()
		sysctl := filepath.Join(dir, "io_uring_disabled")
		require.NoError(t, os.WriteFile(sysctl, []byte(tc.disabled+"\n"), 0o644))
		cmd := exec.Command(os.Args[0], "-test.run=^TestUnavailable$")
		cmd.Env = append(os.Environ(), "URING_TEST_SECCOMP_ERRNO="+itoa(int(tc.errno)), "URING_TEST_DISABLED_PATH="+sysctl)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		want := tc.want
		if strings.Contains(want, "%s") {
			want = strings.ReplaceAll(want, "%s", sysctl)
		}
		assert.Contains(t, string(out), "uring: io_uring is unavailable: ", "errno %v, sysctl %s", tc.errno, tc.disabled)
		assert.Contains(t, string(out), want, "errno %v, sysctl %s", tc.errno, tc.disabled)
		assert.Contains(t, string(out), "io_uring_setup: "+tc.errno.Error())
		assert.Contains(t, string(out), "errors.Is ErrUnavailable: true (New), true (Check)")
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}

func TestMain(m *testing.M) {
	if e := os.Getenv("URING_TEST_SECCOMP_ERRNO"); e != "" {
		os.Exit(seccompChild(e))
	}
	os.Exit(m.Run())
}

// seccompChild forbids io_uring_setup with the errno e, then reports what
// New and Check say.
func seccompChild(e string) int {
	var errno uint32
	for _, c := range e {
		errno = errno*10 + uint32(c-'0')
	}
	DisabledPath = os.Getenv("URING_TEST_DISABLED_PATH")
	if err := uringtest.Forbid(syscall.Errno(errno)); err != nil {
		println(err.Error())
		return 1
	}
	_, err := New(Params{})
	if err == nil {
		println("New worked under the filter")
		return 1
	}
	cerr := Check()
	os.Stdout.WriteString(err.Error() + "\n")
	os.Stdout.WriteString("errors.Is ErrUnavailable: " + boolString(errors.Is(err, ErrUnavailable)) + " (New), " + boolString(errors.Is(cerr, ErrUnavailable)) + " (Check)\n")
	return 0
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// A timeout operation completes with ETIME once its time is up.
func TestTimeoutOp(t *testing.T) {
	r := newRing(t, Params{SingleIssuer: true})
	ts := Timespec{Nsec: int64(time.Millisecond)}
	sqe := r.Next()
	sqe.PrepTimeout(&ts, 0)
	sqe.UserData = 1
	cqe := wait(t, r, 1)[0]
	assert.ErrorIs(t, cqe.Err(), unix.ETIME)
}
