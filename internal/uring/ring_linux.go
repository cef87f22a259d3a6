package uring

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Setup flags (io_uring_setup(2)).
const (
	setupClamp        = 1 << 4
	setupCQSize       = 1 << 3
	setupSubmitAll    = 1 << 7
	setupCoopTaskrun  = 1 << 8
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13
)

// Features the kernel reports; the ring needs the first three.
const (
	featNoDrop   = 1 << 1
	featFastPoll = 1 << 5
	featExtArg   = 1 << 8
)

// io_uring_enter flags.
const (
	enterGetEvents = 1 << 0
	enterExtArg    = 1 << 3
)

// SQ ring flags.
const (
	sqCQOverflow = 1 << 1
	sqTaskrun    = 1 << 2
)

// io_uring_register opcodes.
const (
	registerProbe        = 8
	registerPbufRing     = 22
	unregisterPbufRing   = 23
	ioUringOpSupported   = 1
	offSQRing            = 0
	offCQRing            = 0x8000000
	offSQEs              = 0x10000000
	probeOps             = 256
	defaultEntries       = 256
	defaultCQMultiple    = 4
	maxEntries           = 32768
	sqeSize              = 64
	cqeSize              = 16
	sqOffsetsSize        = 40
	paramsSize           = 120
	getEventsArgSize     = 24
	requiredFeatures     = featNoDrop | featFastPoll | featExtArg
	requiredFeatureNames = "IORING_FEAT_NODROP, IORING_FEAT_FAST_POLL and IORING_FEAT_EXT_ARG"
)

// params is struct io_uring_params.
type params struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFD         uint32
	resv         [3]uint32
	sqOff        sqOffsets
	cqOff        cqOffsets
}

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// getEventsArg is struct io_uring_getevents_arg.
type getEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32
	ts        uint64
}

// Timespec is struct __kernel_timespec, 64-bit on every architecture.
type Timespec struct {
	Sec, Nsec int64
}

// Params configures a Ring. The zero value is a ring of 256 submission
// entries and 1,024 completion entries that any goroutine may drive (one
// at a time).
type Params struct {
	// Entries is the size of the submission queue: at most this many SQEs
	// wait for a submission. 0 means 256; the kernel rounds it up to a
	// power of two and clamps it to 32,768.
	Entries uint32
	// CQEntries is the size of the completion queue; 0 means four times
	// Entries. Completions beyond it are kept by the kernel (it has
	// IORING_FEAT_NODROP, which New requires) until the ring is reaped.
	CQEntries uint32
	// SingleIssuer sets IORING_SETUP_SINGLE_ISSUER and
	// IORING_SETUP_DEFER_TASKRUN: completions are posted only when the
	// ring's goroutine waits for them, with no interrupt of its thread,
	// which is the fastest way to drive a ring. The caller must be locked
	// to its OS thread (runtime.LockOSThread) from New to Close; the
	// kernel refuses submissions from any other thread (EEXIST). On
	// kernels before 6.1, which have neither flag, New sets
	// IORING_SETUP_COOP_TASKRUN where it can and nothing otherwise.
	SingleIssuer bool
}

// Ring is one io_uring: a submission queue of SQEs and a completion
// queue of CQEs in memory shared with the kernel. Next gives the next SQE
// to fill, Submit and SubmitAndWait hand the filled ones to the kernel,
// and Reap takes the completions. A Ring is not safe for concurrent use.
type Ring struct {
	fd       int
	flags    uint32 // the setup flags the kernel accepted
	features uint32

	sqRing, cqRing, sqeMem []byte
	sqHead, sqTail         *uint32
	sqFlags                *uint32
	sqMask, sqEntries      uint32
	sqes                   []SQE
	sqeTail                uint32 // the SQEs handed out by Next end here

	cqHead, cqTail, cqOverflow *uint32
	cqMask, cqEntries          uint32
	cqes                       []CQE

	arg getEventsArg   // the wait's argument, where the kernel reads it
	ts  Timespec       // the wait's timeout
	ops [probeOps]bool // the opcodes the kernel has
	mu  sync.Mutex     // Close against Close
}

// New sets up a ring as p says. Where the kernel refuses io_uring, or
// lacks what New needs, the error wraps ErrUnavailable and says why.
func New(p Params) (*Ring, error) {
	entries := p.Entries
	if entries == 0 {
		entries = defaultEntries
	}
	if entries > maxEntries {
		return nil, fmt.Errorf("uring: %d submission entries: at most %d", entries, maxEntries)
	}
	cqEntries := p.CQEntries
	if cqEntries == 0 {
		cqEntries = defaultCQMultiple * entries
	}
	var tries []uint32
	base := uint32(setupCQSize | setupClamp)
	if p.SingleIssuer {
		tries = append(tries, base|setupSubmitAll|setupSingleIssuer|setupDeferTaskrun)
	}
	tries = append(tries, base|setupSubmitAll|setupCoopTaskrun, base)
	var fd uintptr
	var pr params
	var errno syscall.Errno
	for _, flags := range tries {
		pr = params{flags: flags, cqEntries: cqEntries}
		fd, _, errno = unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&pr)), 0)
		if errno != unix.EINVAL {
			break // EINVAL: flags this kernel does not know; try fewer
		}
	}
	if errno != 0 {
		return nil, setupError(errno)
	}
	r := &Ring{fd: int(fd), flags: pr.flags, features: pr.features}
	if pr.features&requiredFeatures != requiredFeatures {
		unix.Close(r.fd)
		return nil, fmt.Errorf("%w: the kernel's io_uring lacks some of %s (it reports features %#x)", ErrUnavailable, requiredFeatureNames, pr.features)
	}
	if err := r.mmap(&pr); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.probe(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// setupError explains why io_uring_setup failed.
func setupError(errno syscall.Errno) error {
	err := os.NewSyscallError("io_uring_setup", errno)
	switch errno {
	case unix.ENOSYS:
		return fmt.Errorf("%w: the kernel has no io_uring, or a seccomp filter hides it: %w", ErrUnavailable, err)
	case unix.EPERM, unix.EACCES:
		switch disabled := readDisabled(); disabled {
		case "2":
			return fmt.Errorf("%w: %s is 2 (disabled for every process): %w", ErrUnavailable, DisabledPath, err)
		case "1":
			return fmt.Errorf("%w: %s is 1 (only for the group in /proc/sys/kernel/io_uring_group and CAP_SYS_ADMIN), and this process is in neither: %w", ErrUnavailable, DisabledPath, err)
		default:
			return fmt.Errorf("%w: refused although %s is %s; a seccomp filter (as container runtimes install by default) or a security module forbids it: %w",
				ErrUnavailable, DisabledPath, disabled, err)
		}
	case unix.ENOMEM:
		return fmt.Errorf("%w: out of memory for the rings (RLIMIT_MEMLOCK on kernels before 5.12): %w", ErrUnavailable, err)
	case unix.EMFILE, unix.ENFILE:
		return fmt.Errorf("uring: out of file descriptors for the ring: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// DisabledPath is the sysctl that disables io_uring: 0 enabled, 1 only for
// a group, 2 for no one. A variable so that tests can point it elsewhere.
var DisabledPath = "/proc/sys/kernel/io_uring_disabled"

func readDisabled() string {
	b, err := os.ReadFile(DisabledPath)
	if err != nil {
		return "not readable (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(b))
}

func (r *Ring) mmap(p *params) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*cqeSize
	var err error
	// IORING_FEAT_SINGLE_MMAP (5.4) maps both rings at once; New's
	// required features came later, so every kernel New accepts has it.
	size := max(sqSize, cqSize)
	if r.sqRing, err = unix.Mmap(r.fd, offSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("uring: mmap of the rings: %w", os.NewSyscallError("mmap", err))
	}
	r.cqRing = r.sqRing
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("uring: mmap of the SQEs: %w", os.NewSyscallError("mmap", err))
	}
	u32 := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
	r.sqHead, r.sqTail, r.sqFlags = u32(r.sqRing, p.sqOff.head), u32(r.sqRing, p.sqOff.tail), u32(r.sqRing, p.sqOff.flags)
	r.sqMask, r.sqEntries = *u32(r.sqRing, p.sqOff.ringMask), *u32(r.sqRing, p.sqOff.ringEntries)
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&r.sqeMem[0])), r.sqEntries)
	// The SQ array maps ring slots to SQEs; slot i always holds SQE i.
	array := unsafe.Slice(u32(r.sqRing, p.sqOff.array), r.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqeTail = atomic.LoadUint32(r.sqTail)
	r.cqHead, r.cqTail, r.cqOverflow = u32(r.cqRing, p.cqOff.head), u32(r.cqRing, p.cqOff.tail), u32(r.cqRing, p.cqOff.overflow)
	r.cqMask, r.cqEntries = *u32(r.cqRing, p.cqOff.ringMask), *u32(r.cqRing, p.cqOff.ringEntries)
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&r.cqRing[p.cqOff.cqes])), r.cqEntries)
	return nil
}

// probe asks the kernel which opcodes it has, and fails unless it has
// every one a proxy needs.
func (r *Ring) probe() error {
	type probeOp struct {
		op, resv byte
		flags    uint16
		resv2    uint32
	}
	type probe struct {
		lastOp, opsLen byte
		resv           uint16
		resv2          [3]uint32
		ops            [probeOps]probeOp
	}
	var pb probe
	if err := r.register(registerProbe, unsafe.Pointer(&pb), probeOps); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, os.NewSyscallError("io_uring_register(IORING_REGISTER_PROBE)", err))
	}
	for _, o := range pb.ops[:pb.opsLen] {
		r.ops[o.op] = o.flags&ioUringOpSupported != 0
	}
	var missing []string
	for _, op := range requiredOps {
		if !r.ops[op.code] {
			missing = append(missing, op.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: the kernel's io_uring lacks %s", ErrUnavailable, strings.Join(missing, ", "))
	}
	return nil
}

var requiredOps = []struct {
	code uint8
	name string
}{
	{OpAccept, "IORING_OP_ACCEPT"}, {OpConnect, "IORING_OP_CONNECT"}, {OpRecv, "IORING_OP_RECV"}, {OpSend, "IORING_OP_SEND"},
	{OpShutdown, "IORING_OP_SHUTDOWN"}, {OpClose, "IORING_OP_CLOSE"}, {OpAsyncCancel, "IORING_OP_ASYNC_CANCEL"},
	{OpPollAdd, "IORING_OP_POLL_ADD"}, {OpRead, "IORING_OP_READ"}, {OpSocket, "IORING_OP_SOCKET (5.19)"},
}

// Supports reports whether the kernel has op.
func (r *Ring) Supports(op uint8) bool { return r.ops[op] }

// SingleIssuer reports whether the kernel took Params.SingleIssuer.
func (r *Ring) SingleIssuer() bool { return r.flags&setupSingleIssuer != 0 }

// Fd returns the ring's descriptor, which is pollable: it is readable when
// completions wait (with SingleIssuer, only after a wait ran their work).
func (r *Ring) Fd() int { return r.fd }

func (r *Ring) register(op uintptr, arg unsafe.Pointer, n uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), op, uintptr(arg), n, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// Close releases the ring. What was in flight is cancelled by the kernel;
// the descriptors it used stay open.
func (r *Ring) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil
	}
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.sqRing != nil {
		unix.Munmap(r.sqRing)
	}
	r.sqeMem, r.sqRing, r.cqRing, r.sqes, r.cqes = nil, nil, nil, nil, nil
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Next returns the next SQE, zeroed, for the caller to fill before the
// next Submit or SubmitAndWait. When the submission queue is full it
// submits what is queued first; it returns nil only if the kernel takes
// none of them (out of memory).
func (r *Ring) Next() *SQE {
	if r.sqeTail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
		r.Submit()
		if r.sqeTail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
			return nil
		}
	}
	sqe := &r.sqes[r.sqeTail&r.sqMask]
	*sqe = SQE{}
	r.sqeTail++
	return sqe
}

// Reserve makes room for n SQEs in the submission queue, submitting what
// is queued if there is less, so that the next n calls of Next return
// SQEs of one submission: a chain of linked SQEs must not be split across
// two. It reports whether there is room.
func (r *Ring) Reserve(n int) bool {
	if n > int(r.sqEntries) {
		return false
	}
	if int(r.sqEntries)-r.Pending() >= n {
		return true
	}
	r.Submit()
	return int(r.sqEntries)-r.Pending() >= n
}

// Pending returns how many SQEs wait for a submission.
func (r *Ring) Pending() int { return int(r.sqeTail - atomic.LoadUint32(r.sqHead)) }

// flush publishes the SQEs handed out and returns how many wait.
func (r *Ring) flush() uint32 {
	atomic.StoreUint32(r.sqTail, r.sqeTail)
	return r.sqeTail - atomic.LoadUint32(r.sqHead)
}

// Submit hands the queued SQEs to the kernel without waiting, and returns
// how many it took.
func (r *Ring) Submit() (int, error) {
	n := r.flush()
	if n == 0 {
		return 0, nil
	}
	return r.enter(n, 0, 0, nil)
}

// SubmitAndWait hands the queued SQEs to the kernel and waits until at
// least minComplete completions are ready, or for timeout if it is
// positive (a timeout is not an error: Reap then finds fewer). It returns
// how many SQEs the kernel took. An interrupted wait returns no error;
// the caller reaps and waits again.
func (r *Ring) SubmitAndWait(minComplete uint32, timeout time.Duration) (int, error) {
	n := r.flush()
	var arg *getEventsArg
	if timeout > 0 {
		r.ts = Timespec{Sec: int64(timeout / time.Second), Nsec: int64(timeout % time.Second)}
		r.arg = getEventsArg{ts: uint64(uintptr(unsafe.Pointer(&r.ts)))}
		arg = &r.arg
	}
	got, err := r.enter(n, minComplete, enterGetEvents, arg)
	if err == unix.ETIME || err == unix.EINTR {
		err = nil
	}
	return got, err
}

func (r *Ring) enter(submit, minComplete, flags uint32, arg *getEventsArg) (int, error) {
	var argp, argSize uintptr
	if arg != nil {
		flags |= enterExtArg
		argp, argSize = uintptr(unsafe.Pointer(arg)), getEventsArgSize
	}
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), uintptr(minComplete), uintptr(flags), argp, argSize)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Reap copies up to len(dst) ready completions into dst, in the order the
// kernel posted them, and returns how many. Completions the kernel kept
// because the queue was full come after the queued ones, and so do those
// whose work waits for the ring's thread (with SingleIssuer): Reap enters
// the kernel to fetch them when it finds the queue empty and the kernel
// says there are more.
func (r *Ring) Reap(dst []CQE) int {
	n := 0
	for n < len(dst) {
		head, tail := *r.cqHead, atomic.LoadUint32(r.cqTail)
		for head != tail && n < len(dst) {
			dst[n] = r.cqes[head&r.cqMask]
			head++
			n++
		}
		atomic.StoreUint32(r.cqHead, head)
		if n == len(dst) || atomic.LoadUint32(r.sqFlags)&(sqCQOverflow|sqTaskrun) == 0 {
			break
		}
		if _, err := r.enter(0, 0, enterGetEvents, nil); err != nil {
			break
		}
		if atomic.LoadUint32(r.cqTail) == head {
			break
		}
	}
	return n
}

// Ready returns how many completions wait in the queue.
func (r *Ring) Ready() int { return int(atomic.LoadUint32(r.cqTail) - *r.cqHead) }

// Dropped returns how many completions the kernel could not keep (it only
// drops when it cannot allocate memory for an overflowing one).
func (r *Ring) Dropped() uint32 { return atomic.LoadUint32(r.cqOverflow) }

var (
	checkOnce sync.Once
	checkErr  error
)

// Check reports whether this process can use io_uring with every
// operation a proxy needs: nil, or an error wrapping ErrUnavailable that
// says why not. It sets up a small ring once and remembers the answer.
func Check() error {
	checkOnce.Do(func() {
		r, err := New(Params{Entries: 4})
		if err != nil {
			checkErr = err
			return
		}
		defer r.Close()
		b, err := r.NewBufRing(0, 2, 64)
		if err != nil {
			checkErr = err
			return
		}
		b.Close()
	})
	return checkErr
}

// errnoOf returns the error of a negative CQE result, or nil.
func errnoOf(res int32) error {
	if res >= 0 {
		return nil
	}
	return syscall.Errno(-res)
}

// Err returns the error of a completion: nil when Res is not negative,
// else the syscall.Errno it carries.
func (c CQE) Err() error { return errnoOf(c.Res) }
