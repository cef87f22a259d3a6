package uringtest

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Forbid makes every later io_uring_setup of this process (every thread)
// fail with errno, through a seccomp filter that nothing can remove.
func Forbid(errno syscall.Errno) error {
	const (
		ldAbsW   = 0x20 // BPF_LD|BPF_W|BPF_ABS
		jeqK     = 0x15 // BPF_JMP|BPF_JEQ|BPF_K
		retK     = 0x06 // BPF_RET|BPF_K
		retErrno = 0x00050000
		retAllow = 0x7fff0000
	)
	filter := []unix.SockFilter{
		{Code: ldAbsW, K: 0}, // seccomp_data.nr
		{Code: jeqK, Jt: 0, Jf: 1, K: unix.SYS_IO_URING_SETUP},
		{Code: retK, K: retErrno | uint32(errno)},
		{Code: retK, K: retAllow},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("uringtest: prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	const setModeFilter, flagTsync = 1, 1
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, setModeFilter, flagTsync, uintptr(unsafe.Pointer(&prog))); e != 0 {
		return fmt.Errorf("uringtest: seccomp: %w", e)
	}
	return nil
}
