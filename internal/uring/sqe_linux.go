package uring

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Opcodes (enum io_uring_op) of the operations this package prepares.
const (
	OpNop         uint8 = 0
	OpPollAdd     uint8 = 6
	OpPollRemove  uint8 = 7
	OpTimeout     uint8 = 11
	OpAccept      uint8 = 13
	OpAsyncCancel uint8 = 14
	OpLinkTimeout uint8 = 15
	OpConnect     uint8 = 16
	OpClose       uint8 = 19
	OpRead        uint8 = 22
	OpWrite       uint8 = 23
	OpSend        uint8 = 26
	OpRecv        uint8 = 27
	OpSplice      uint8 = 30
	OpShutdown    uint8 = 34
	OpSocket      uint8 = 45
)

// SQE flags (IOSQE_*).
const (
	// FlagLink makes the next SQE wait for this one, and fail with
	// ECANCELED if this one fails.
	FlagLink uint8 = 1 << 2
	// FlagHardLink makes the next SQE wait for this one whatever its
	// result.
	FlagHardLink uint8 = 1 << 3
	// FlagBufferSelect takes the buffer from a BufRing (see PrepRecv).
	FlagBufferSelect uint8 = 1 << 5
	// FlagSkipSuccess posts no completion when the operation succeeds.
	FlagSkipSuccess uint8 = 1 << 6
)

// CQE flags (IORING_CQE_F_*).
const (
	// CQEBuffer says the completion used a provided buffer, whose ID is
	// CQE.BufferID.
	CQEBuffer uint32 = 1 << 0
	// CQEMore says the operation (a multishot one) goes on and will post
	// more completions; without it, this is its last.
	CQEMore uint32 = 1 << 1
	// CQESockNonempty says the socket had more data after a recv.
	CQESockNonempty uint32 = 1 << 2
)

// Flags kept in SQE.Ioprio.
const (
	acceptMultishot = 1 << 0
	recvMultishot   = 1 << 1
	pollAddMulti    = 1 << 0
	cancelAll       = 1 << 0
	cancelFD        = 1 << 1
)

// SQE is a submission queue entry (struct io_uring_sqe). The Prep methods
// fill it for one operation each; set UserData (and Flags) after them.
type SQE struct {
	Opcode      uint8
	Flags       uint8
	Ioprio      uint16
	Fd          int32
	Off         uint64 // also addr2
	Addr        uint64 // also splice_off_in
	Len         uint32
	OpFlags     uint32 // rw_flags, msg_flags, accept_flags, cancel_flags...
	UserData    uint64
	BufIndex    uint16 // also buf_group
	Personality uint16
	FileIndex   int32 // also splice_fd_in
	Addr3       uint64
	_           uint64
}

// CQE is a completion queue entry (struct io_uring_cqe): the UserData of
// the SQE it completes, its result (a negative errno on failure) and
// flags (CQEBuffer, CQEMore, CQESockNonempty).
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// BufferID returns the provided buffer a completion used, when
// Flags&CQEBuffer is set.
func (c CQE) BufferID() uint16 { return uint16(c.Flags >> 16) }

func (s *SQE) prep(op uint8, fd int, addr unsafe.Pointer, n uint32, off uint64) {
	s.Opcode, s.Fd, s.Addr, s.Len, s.Off = op, int32(fd), uint64(uintptr(addr)), n, off
}

// PrepNop prepares an operation that does nothing and completes with 0.
func (s *SQE) PrepNop() { s.Opcode = OpNop }

// PrepMultishotAccept prepares an accept on the listening socket fd that
// goes on accepting, posting a completion for each connection (its new
// descriptor in Res, with flags such as SOCK_CLOEXEC applied) while
// CQEMore is set. Accepting that stops, on an error or when cancelled,
// posts a completion without CQEMore.
func (s *SQE) PrepMultishotAccept(fd int, flags uint32) {
	s.prep(OpAccept, fd, nil, 0, 0)
	s.Ioprio, s.OpFlags = acceptMultishot, flags
}

// PrepAccept prepares one accept on the listening socket fd. When sa is
// not nil the kernel writes the peer's address there and its length to
// *n, which must hold sa's size: both must stay reachable until the
// completion.
func (s *SQE) PrepAccept(fd int, sa *unix.RawSockaddrAny, n *uint32, flags uint32) {
	s.prep(OpAccept, fd, unsafe.Pointer(sa), 0, uint64(uintptr(unsafe.Pointer(n))))
	s.OpFlags = flags
}

// PrepRecv prepares a recv from fd into a buffer the kernel takes from the
// BufRing of group when data arrives (so that a socket with nothing to
// read holds no buffer). A completion with Res > 0 carries CQEBuffer and
// the buffer's ID; Res 0 is the peer's FIN; ENOBUFS says the BufRing was
// empty. With multishot the recv goes on, one completion for each arrival,
// while CQEMore is set.
func (s *SQE) PrepRecv(fd int, group uint16, multishot bool) {
	s.prep(OpRecv, fd, nil, 0, 0)
	s.Flags |= FlagBufferSelect
	s.BufIndex = group
	if multishot {
		s.Ioprio = recvMultishot
	}
}

// PrepRecvInto prepares a recv from fd into p, which must stay reachable
// until the completion.
func (s *SQE) PrepRecvInto(fd int, p []byte) {
	s.prep(OpRecv, fd, unsafe.Pointer(unsafe.SliceData(p)), uint32(len(p)), 0)
}

// PrepSend prepares a send of p on fd with MSG_NOSIGNAL and MSG_WAITALL:
// the kernel sends all of p before it completes, unless the connection
// fails. p must stay reachable and unchanged until the completion.
func (s *SQE) PrepSend(fd int, p []byte) {
	s.prep(OpSend, fd, unsafe.Pointer(unsafe.SliceData(p)), uint32(len(p)), 0)
	s.OpFlags = unix.MSG_NOSIGNAL | unix.MSG_WAITALL
}

// PrepRead prepares a read(2) of fd into p (for an eventfd, say), which
// must stay reachable until the completion.
func (s *SQE) PrepRead(fd int, p []byte) {
	s.prep(OpRead, fd, unsafe.Pointer(unsafe.SliceData(p)), uint32(len(p)), ^uint64(0))
}

// PrepSocket prepares socket(2): Res is the new descriptor.
func (s *SQE) PrepSocket(domain, typ, proto int) {
	s.prep(OpSocket, domain, nil, uint32(proto), uint64(typ))
}

// PrepConnect prepares a connect of fd to sa, whose length is n (see
// Sockaddr); sa must stay reachable until the completion.
func (s *SQE) PrepConnect(fd int, sa *unix.RawSockaddrAny, n uint32) {
	s.prep(OpConnect, fd, unsafe.Pointer(sa), 0, uint64(n))
}

// PrepShutdown prepares shutdown(2) of fd (how is unix.SHUT_WR, say). The
// kernel runs it on a worker thread and looks fd up only then: a close of
// fd submitted after it can run first, and the number be another socket's.
func (s *SQE) PrepShutdown(fd, how int) { s.prep(OpShutdown, fd, nil, uint32(how), 0) }

// PrepClose prepares close(2) of fd. A descriptor that operations in
// flight still use stays alive in the kernel until they end: cancel them
// first (PrepCancelFD, linked with FlagHardLink).
func (s *SQE) PrepClose(fd int) { s.prep(OpClose, fd, nil, 0, 0) }

// PrepCancel prepares the cancellation of the operation whose UserData is
// target. The cancelled operation completes with ECANCELED; this one with
// 0, or ENOENT when nothing matched, or EALREADY when it was running.
func (s *SQE) PrepCancel(target uint64) {
	s.prep(OpAsyncCancel, -1, nil, 0, 0)
	s.Addr = target
}

// PrepCancelFD prepares the cancellation of every operation in flight on
// fd; Res is how many it cancelled, or ENOENT when none.
func (s *SQE) PrepCancelFD(fd int) {
	s.prep(OpAsyncCancel, fd, nil, 0, 0)
	s.OpFlags = cancelFD | cancelAll
}

// PrepPoll prepares a poll of fd for events (unix.POLLIN, say); with
// multishot it reports every readiness while CQEMore is set.
func (s *SQE) PrepPoll(fd int, events uint32, multishot bool) {
	s.prep(OpPollAdd, fd, nil, 0, 0)
	s.OpFlags = events
	if multishot {
		s.Len = pollAddMulti
	}
}

// PrepTimeout prepares a timeout that completes with ETIME after ts, or
// with 0 once count other completions were posted (count 0: only the
// time). ts must stay reachable until the completion.
func (s *SQE) PrepTimeout(ts *Timespec, count uint64) {
	s.prep(OpTimeout, -1, unsafe.Pointer(ts), 1, count)
}

// PrepSplice prepares splice(2) of up to n bytes from fdIn to fdOut
// (one of them a pipe), at their current positions, with flags such as
// unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK.
func (s *SQE) PrepSplice(fdIn, fdOut int, n uint32, flags uint32) {
	s.prep(OpSplice, fdOut, nil, n, ^uint64(0))
	s.Addr = ^uint64(0) // splice_off_in: no offset
	s.FileIndex = int32(fdIn)
	s.OpFlags = flags
}

// AddrPortOf returns the address in sa, an IPv4 address in IPv6 unmapped;
// the zero AddrPort if it is neither IPv4 nor IPv6.
func AddrPortOf(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		sin := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sin.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sin.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		sin6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sin6.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sin6.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// Sockaddr fills sa with the socket address of ap and returns its length
// and address family, for PrepConnect and socket(2).
func Sockaddr(ap netip.AddrPort, sa *unix.RawSockaddrAny) (n uint32, family int) {
	*sa = unix.RawSockaddrAny{}
	port := ap.Port()
	if a := ap.Addr(); a.Is4() || a.Is4In6() {
		sin := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sin.Family = unix.AF_INET
		sin.Addr = a.Unmap().As4()
		p := (*[2]byte)(unsafe.Pointer(&sin.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return unix.SizeofSockaddrInet4, unix.AF_INET
	}
	sin6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	sin6.Family = unix.AF_INET6
	sin6.Addr = ap.Addr().As16()
	p := (*[2]byte)(unsafe.Pointer(&sin6.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return unix.SizeofSockaddrInet6, unix.AF_INET6
}
